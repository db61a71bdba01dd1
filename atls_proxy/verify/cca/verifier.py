"""Appraisal of an Arm CCA attestation token against trusted CPAKs and a ``CcaPolicy``.

Theory of operation
-------------------
``appraise_cca`` never raises for bad input: every problem is a failed, named ``Check``. Trust
flows from an operator-trusted CPAK (CCA Platform Attestation Key) to the platform token, from the
platform token's challenge to the hash of the Realm Attestation Key (RAK), and from the RAK to the
realm token (RMM DEN0137 §A7.2 "Realm attestation token"; draft-ffm-rats-cca-token "Verification").
The checks follow that chain, in this order:

1. ``cca.token.format`` — tag 399 collection of exactly {44234: platform, 44241: realm}, each a
   tagged ES256/ES384/ES512 COSE_Sign1, claims type-checked, the RAK claim a valid EC key
   (``token.parse_token``). Then ``cca.token.trailing-bytes`` (passed) if bytes follow the
   collection.
2. ``cca.platform.signature`` — the platform COSE_Sign1 verifies with one of the trusted CPAKs,
   whose curve is the algorithm's (RFC 9053 §2.1). Known TEST CPAKs are named in the detail.
   ``cca.platform.cpak-binding`` (only for a CPAK from a trust-anchor store that binds it) — the
   token's implementation-id and instance-id are the ones bound to that CPAK.
3. ``cca.realm.signature`` — the realm COSE_Sign1 verifies with the RAK from claim 44237.
4. ``cca.platform.challenge`` — the platform challenge (claim 10) equals
   H(realm public key claim bytes), H the realm's public-key hash algorithm (claim 44240). This
   is what ties the realm token to the platform: without it, any key could sign realm claims.
5. ``cca.profile`` — the platform profile (265) is a known CCA platform profile and the realm
   profile, when present, a known realm profile (claims are read the way those profiles say).
6. ``cca.platform.lifecycle`` — the lifecycle state (2395) is one the policy accepts.
7. ``cca.platform.implementation-id``, ``cca.platform.instance-id``, ``cca.platform.config`` —
   one of the policy's values, or passed "not constrained by policy".
8. ``cca.platform.sw-component.<i>`` — one per token component, in token order: it matches a
   policy reference (measurement-value, and signer-id and type when the reference has them), or
   passed "not constrained" when the policy lists none; then ``cca.platform.sw-components.complete``
   — every component type the policy names is present (only when the policy names types).
9. ``cca.register.<name>`` — rim, rem0..rem3, rpv: one of the policy's values, or passed "not
   constrained by policy".
10. ``cca.report-data`` — the realm challenge (64 bytes) equals ``expected_report_data``.

Stopping rule: a failure in 1-5 ends the appraisal, so a forged or unbound token never produces
"passed" lines about its claims. From 6 on every check runs and reports.

Trust vector (draft-ietf-rats-ar4si): ``instance-identity`` 2 once a trusted CPAK signed (96 if
not); ``hardware`` 2 for an accepted "secured" platform whose sw-components all match, 32 when a
TEST CPAK signed or an accepted non-secured lifecycle, 96 for a refused lifecycle or a
sw-component mismatch; ``executables`` 2/96 when the policy lists realm registers (no claim
otherwise).
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from atls_proxy.errors import DecodeError
from atls_proxy.verify.cca.policy import REGISTER_NAMES, CcaPolicy, SwReference
from atls_proxy.verify.cca.token import (
    PLATFORM_PROFILES,
    REALM_PROFILES,
    CcaToken,
    CoseSign1,
    SwComponent,
    hash_of,
    lifecycle_state,
    parse_token,
)
from atls_proxy.verify.cca.trust import CcaTrust, TrustedCpak
from atls_proxy.verify.hardware import HardwareVerifier
from atls_proxy.verify.policy import DEFAULT_POLICY_ID
from atls_proxy.verify.result import Appraisal, Check, Tier

logger = logging.getLogger(__name__)

EVIDENCE_TYPE = "cca"
# The configfs-tsm attester's media type for an arm_cca_guest outblob
# (atls_proxy.attest.configfs.PROVIDER_MEDIA_TYPES): the raw tag-399 token.
MEDIA_TYPE = "application/vnd.atls-proxy.cca-token"
# Veraison's scheme/arm-cca media type for the same bytes (spec digest §4 table); also accepted.
VERAISON_MEDIA_TYPE = 'application/eat-collection; profile="http://arm.com/CCA-SSD/1.0.0"'
_VERAISON_PARSED = ("application/eat-collection", {"profile": "http://arm.com/CCA-SSD/1.0.0"})

TV_INSTANCE_IDENTITY = "instance-identity"
TV_HARDWARE = "hardware"
TV_EXECUTABLES = "executables"
SECURED = "secured"


class _Stop(Exception):
    """Internal: the appraisal cannot go on (the failed check is already recorded)."""


def verify_sign1(message: CoseSign1, key: ec.EllipticCurvePublicKey) -> bool:
    """True when ``key`` (on the algorithm's curve) verifies ``message`` (RFC 9052 §4.4)."""
    alg = message.alg
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, alg.curve):
        return False
    n = alg.coordinate_size
    r = int.from_bytes(message.signature[:n], "big")
    s = int.from_bytes(message.signature[n:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message.to_be_signed(), ec.ECDSA(alg.hash()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _values(values: frozenset[bytes]) -> str:
    return " | ".join(sorted(v.hex() for v in values))


class _Appraiser:
    """One appraisal: the checks in report order (module docstring)."""

    def __init__(
        self,
        appraisal: Appraisal,
        policy: CcaPolicy,
        trust: CcaTrust,
        expected_report_data: bytes | None,
    ) -> None:
        self.a = appraisal
        self.policy = policy
        self.trust = trust
        self.expected_report_data = expected_report_data
        self.tv = appraisal.trust_vector
        self.test_key = False

    def add(
        self,
        name: str,
        passed: bool,
        detail: str = "",
        observed: str | None = None,
        expected: str | None = None,
    ) -> bool:
        self.a.add(Check(name, passed, detail, observed, expected))
        return passed

    def stop(
        self, name: str, detail: str, observed: str | None = None, expected: str | None = None
    ) -> NoReturn:
        self.add(name, False, detail, observed, expected)
        raise _Stop

    def need(
        self,
        name: str,
        passed: bool,
        detail: str,
        observed: str | None = None,
        expected: str | None = None,
    ) -> None:
        if not passed:
            self.stop(name, detail, observed, expected)
        self.add(name, True, detail, observed, expected)

    # -- the chain ----------------------------------------------------------------------------

    def run(self, evidence: bytes) -> None:
        try:
            token = parse_token(evidence)
        except DecodeError as exc:
            self.stop("cca.token.format", str(exc), observed=f"{len(evidence)} bytes")
        pc, rc = token.platform_claims, token.realm_claims
        self.add(
            "cca.token.format",
            True,
            f"tag-399 collection: platform {token.platform.alg.name} COSE_Sign1 "
            f"({len(pc.sw_components)} sw-components), realm {token.realm.alg.name} COSE_Sign1 "
            f"(RAK {token.realm_key.curve.name}, {rc.public_key_encoding} encoding; "
            f"measurements {rc.hash_algorithm})",
            observed=f"{token.signed_length} bytes",
        )
        if token.trailing:
            self.add(
                "cca.token.trailing-bytes",
                True,
                f"{len(token.trailing)} bytes after the token are not part of it and were ignored",
                observed=token.trailing[:64].hex(),
            )
        cpak = self.platform_signature(token)
        self.cpak_binding(token, cpak)
        self.need(
            "cca.realm.signature",
            verify_sign1(token.realm, token.realm_key),
            f"{token.realm.alg.name} signature by the RAK in the realm public key claim (44237)",
            observed=token.realm.signature.hex(),
            expected=f"RAK {rc.public_key_claim.hex()}",
        )
        rak_hash = hash_of(rc.public_key_hash_algorithm, rc.public_key_claim)
        self.need(
            "cca.platform.challenge",
            hmac.compare_digest(pc.challenge, rak_hash),
            f"platform challenge = {rc.public_key_hash_algorithm}(realm public key claim): the "
            "realm token is bound to this platform token"
            if hmac.compare_digest(pc.challenge, rak_hash)
            else "the platform token does not vouch for this RAK: the realm token is not bound "
            "to the platform token",
            observed=pc.challenge.hex(),
            expected=rak_hash.hex(),
        )
        self.profile(token)
        self.lifecycle(token)
        self.platform_ids(token)
        self.sw_components(token)
        self.registers(token)
        self.report_data(token)

    def platform_signature(self, token: CcaToken) -> TrustedCpak:
        alg = token.platform.alg
        if not self.trust.cpaks:
            self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
            self.stop(
                "cca.platform.signature",
                "no trusted CPAK is configured",
                observed=token.platform.signature.hex(),
                expected="a trusted CPAK",
            )
        for cpak in self.trust.cpaks:
            if verify_sign1(token.platform, cpak.key):
                note = cpak.test_key_note
                self.test_key = note is not None
                detail = f"{alg.name} signature by trusted CPAK {cpak.source}"
                if note:
                    detail += f"; WARNING: {note}"
                self.add(
                    "cca.platform.signature",
                    True,
                    detail,
                    observed=token.platform.signature.hex(),
                    expected=f"CPAK sha256(SPKI) {cpak.fingerprint}",
                )
                self.tv[TV_INSTANCE_IDENTITY] = int(Tier.AFFIRMING)
                return cpak
        self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
        self.stop(
            "cca.platform.signature",
            f"the {alg.name} signature verifies with none of the {len(self.trust.cpaks)} "
            "trusted CPAK(s) (forged, tampered, or another platform)",
            observed=token.platform.signature.hex(),
            expected=" | ".join(c.fingerprint for c in self.trust.cpaks),
        )

    def cpak_binding(self, token: CcaToken, cpak: TrustedCpak) -> None:
        if cpak.implementation_id is None and cpak.instance_id is None:
            return
        pc = token.platform_claims
        bad = []
        if cpak.implementation_id is not None and cpak.implementation_id != pc.implementation_id:
            bad.append("implementation-id")
        if cpak.instance_id is not None and cpak.instance_id != pc.instance_id:
            bad.append("instance-id")
        self.add(
            "cca.platform.cpak-binding",
            not bad,
            f"{', '.join(bad)} differ(s) from the platform {cpak.source} binds this CPAK to"
            if bad
            else f"implementation-id and instance-id are those {cpak.source} binds the CPAK to",
            observed=f"{pc.implementation_id.hex()} / {pc.instance_id.hex()}",
            expected=f"{(cpak.implementation_id or b'').hex() or '*'} / "
            f"{(cpak.instance_id or b'').hex() or '*'}",
        )

    def profile(self, token: CcaToken) -> None:
        pp, rp = token.platform_claims.profile, token.realm_claims.profile
        problems = []
        if pp not in PLATFORM_PROFILES:
            problems.append(f"unknown platform profile {pp!r}")
        if rp is not None and rp not in REALM_PROFILES:
            problems.append(f"unknown realm profile {rp!r}")
        self.need(
            "cca.profile",
            not problems,
            "; ".join(problems) or "known CCA profiles",
            observed=f"platform {pp}; realm {rp or '(none: pre-REL0 token)'}",
            expected=f"platform {' | '.join(PLATFORM_PROFILES)}; realm (none) | "
            + " | ".join(REALM_PROFILES),
        )

    # -- platform claims ----------------------------------------------------------------------

    def lifecycle(self, token: CcaToken) -> None:
        value = token.platform_claims.lifecycle
        state = lifecycle_state(value)
        accepted = self.policy.accepted_lifecycles
        ok = state is not None and state in accepted
        if state is None:
            detail = "the lifecycle value is in no defined range"
        elif ok:
            detail = f"lifecycle {state}" + (
                "" if state == SECURED else " accepted by the policy (not a secured platform)"
            )
        else:
            detail = f"a platform in lifecycle {state} is not accepted by the policy"
        self.add(
            "cca.platform.lifecycle",
            ok,
            detail,
            observed=f"0x{value:04x} ({state or 'invalid'})",
            expected=" | ".join(sorted(accepted)),
        )
        if not ok:
            self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)
        elif state != SECURED or self.test_key:
            self.tv[TV_HARDWARE] = int(Tier.WARNING)
        else:
            self.tv[TV_HARDWARE] = int(Tier.AFFIRMING)

    def one_of(self, name: str, label: str, value: bytes, accepted: frozenset[bytes]) -> None:
        if not accepted:
            self.add(name, True, "not constrained by policy", observed=value.hex())
            return
        ok = value in accepted
        self.add(
            name,
            ok,
            "" if ok else f"{label} is not one the policy accepts",
            observed=value.hex(),
            expected=_values(accepted),
        )

    def platform_ids(self, token: CcaToken) -> None:
        pc, p = token.platform_claims, self.policy
        self.one_of(
            "cca.platform.implementation-id",
            "implementation-id",
            pc.implementation_id,
            p.implementation_ids,
        )
        self.one_of("cca.platform.instance-id", "instance-id", pc.instance_id, p.instance_ids)
        self.one_of("cca.platform.config", "platform-config", pc.config, p.platform_configs)

    def sw_components(self, token: CcaToken) -> None:
        refs = self.policy.sw_components
        matched = True
        for i, comp in enumerate(token.platform_claims.sw_components):
            observed = _describe(comp)
            name = f"cca.platform.sw-component.{i}"
            if not refs:
                self.add(name, True, f"{comp.label()}: not constrained by policy", observed)
                continue
            hit = next((r for r in refs if _matches(r, comp)), None)
            if hit is not None:
                self.add(
                    name, True, f"{comp.label()}: matches the policy", observed, hit.describe()
                )
                continue
            matched = False
            same_type = [r for r in refs if r.type is not None and r.type == comp.measurement_type]
            self.add(
                name,
                False,
                f"{comp.label()}: measurement/signer not in the policy",
                observed,
                " | ".join(r.describe() for r in (same_type or refs)[:8])
                + (" | …" if len(same_type or refs) > 8 else ""),
            )
        named = sorted({r.type for r in refs if r.type is not None})
        if named:
            present = {c.measurement_type for c in token.platform_claims.sw_components}
            missing = [t for t in named if t not in present]
            matched = matched and not missing
            self.add(
                "cca.platform.sw-components.complete",
                not missing,
                f"missing from the token: {', '.join(missing)}"
                if missing
                else "every component type the policy names is present",
                observed=", ".join(sorted(t or "(untyped)" for t in present)),
                expected=", ".join(named),
            )
        if refs and not matched:
            self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)

    # -- realm claims -------------------------------------------------------------------------

    def registers(self, token: CcaToken) -> None:
        rc = token.realm_claims
        values = {
            "rim": rc.initial_measurement,
            **{f"rem{i}": v for i, v in enumerate(rc.extensible_measurements)},
            "rpv": rc.personalization_value,
        }
        matched = True
        for name in REGISTER_NAMES:
            accepted = self.policy.registers.get(name)
            value = values[name]
            if accepted is None:
                self.add(
                    f"cca.register.{name}", True, "not constrained by policy", observed=value.hex()
                )
                continue
            ok = value in accepted
            matched = matched and ok
            self.add(
                f"cca.register.{name}",
                ok,
                "" if ok else "not a value the policy accepts",
                observed=value.hex(),
                expected=_values(accepted),
            )
        if self.policy.registers:
            self.tv[TV_EXECUTABLES] = int(Tier.AFFIRMING if matched else Tier.CONTRAINDICATED)

    def report_data(self, token: CcaToken) -> None:
        observed = token.realm_claims.challenge
        if self.expected_report_data is None:
            self.add(
                "cca.report-data",
                True,
                "not checked: no binding (offline appraisal)",
                observed=observed.hex(),
            )
            return
        ok = hmac.compare_digest(observed, self.expected_report_data)
        self.add(
            "cca.report-data",
            ok,
            "" if ok else "the realm challenge does not carry this connection's binding",
            observed=observed.hex(),
            expected=self.expected_report_data.hex(),
        )


def _describe(comp: SwComponent) -> str:
    out = f"{comp.label()} {comp.measurement_value.hex()} signer {comp.signer_id.hex()}"
    return out + (f" version {comp.version}" if comp.version else "")


def _matches(ref: SwReference, comp: SwComponent) -> bool:
    if ref.measurement != comp.measurement_value:
        return False
    if ref.signer_id is not None and ref.signer_id != comp.signer_id:
        return False
    return ref.type is None or ref.type == comp.measurement_type


def appraise_cca(
    evidence: bytes,
    *,
    policy: CcaPolicy,
    trust: CcaTrust,
    now: datetime,
    expected_report_data: bytes | None,
    policy_id: str = DEFAULT_POLICY_ID,
) -> Appraisal:
    """Appraise one CCA attestation token (module docstring). Never raises for bad input.

    ``now`` is part of the common signature; nothing in a CCA token or a bare CPAK has a validity
    window, so it is not used.
    """
    del now
    appraisal = Appraisal(evidence_type=EVIDENCE_TYPE, policy_id=policy_id)
    try:
        _Appraiser(appraisal, policy, trust, expected_report_data).run(evidence)
    except _Stop:
        pass
    except Exception as exc:  # a bug, never bad evidence: fail closed and say so
        logger.exception("CCA verifier failed unexpectedly")
        appraisal.add(Check("cca.internal-error", False, detail=f"{type(exc).__name__}: {exc}"))
    return appraisal


class CcaVerifier(HardwareVerifier[CcaPolicy, CcaTrust]):
    """The ``Verifier`` for CCA evidence (verify/hardware.py)."""

    accepted = ((MEDIA_TYPE, {}), _VERAISON_PARSED)

    def run(self, evidence: bytes, **kwargs: Any) -> Appraisal:
        return appraise_cca(evidence, **kwargs)
