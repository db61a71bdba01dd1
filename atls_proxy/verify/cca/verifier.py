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
   ``cca.platform.cpak-binding`` (only for a key some trust-anchor store entry binds) — the
   token's implementation-id and instance-id are those of one of the entries binding that key; an
   unbound copy of the same key (another file) does not lift the binding.
3. ``cca.realm.signature`` — the realm COSE_Sign1 verifies with the RAK from claim 44237.
4. ``cca.platform.challenge`` — the platform challenge (claim 10) equals
   H(realm public key claim bytes), H the realm's public-key hash algorithm (claim 44240). This
   is what ties the realm token to the platform: without it, any key could sign realm claims.
5. ``cca.profile`` — the platform profile (265) is a known CCA platform profile and the realm
   profile, when present, a known realm profile (claims are read the way those profiles say).
6. ``cca.platform.lifecycle`` — the lifecycle state (2395) is one the policy accepts.
7. ``cca.platform.implementation-id``, ``cca.platform.instance-id``, ``cca.platform.config`` —
   the instance-id is one of the policy's values; implementation-id and config are those of the
   platform reference record that fits (below); or passed "not constrained by policy".
8. ``cca.platform.sw-component.<i>`` — one per token component, in token order: it matches a
   reference of that record (measurement-value, and signer-id and type when the reference has
   them), or passed "not compared" when there is none; then ``cca.platform.sw-components.complete``
   — every component type the record names is present, and every untyped reference's
   measurement (only when the record has sw-component references).
9. ``cca.register.<name>`` — rim, rem0..rem3, rpv: the value of the realm reference record that
   fits, or passed "not constrained by policy".
10. ``cca.report-data`` — the realm challenge (64 bytes) equals ``expected_report_data``.

Reference records (the Veraison/rvstore data model, docs/VERIFIERS-CCA.md): the policy holds
platform records and realm records, each one good state. A token must match one platform record
and one realm record as a whole; values of different records never combine. The record reported
is the first whole match or, failing that, the closest one (fewest mismatches, preferring a
matching implementation-id / RIM); its number is named in the details when there are several.

Stopping rule: a failure in 1-5 ends the appraisal, so a forged or unbound token never produces
"passed" lines about its claims. From 6 on every check runs and reports.

Trust vector (draft-ietf-rats-ar4si): ``instance-identity`` 2 once a trusted CPAK signed (96 if
not); ``hardware`` 2 for an accepted "secured" platform whose platform record, with its
sw-component references, matches whole; 32 when a TEST CPAK signed, for an accepted non-secured
lifecycle, or when no sw-component reference was compared (the firmware is not judged, so not
affirmed); 96 for a refused lifecycle or a platform record that does not match; ``executables``
2/96 when the policy has realm records (no claim otherwise).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from atls_proxy.errors import DecodeError
from atls_proxy.verify.cca.policy import REGISTER_NAMES, CcaPolicy, PlatformReference, SwReference
from atls_proxy.verify.cca.token import (
    PLATFORM_PROFILES,
    REALM_PROFILES,
    CcaToken,
    CoseSign1,
    PlatformClaims,
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
        self.platform(token)
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
        # Every trusted entry for this key counts, not only the one that verified first: a
        # trust-anchor store binds the key to a platform, and an unbound copy of the same key in
        # another file (cpak-pub.json beside tastore.json) must not lift that binding.
        bound = self.trust.bindings_of(cpak)
        if not bound:
            return
        pc = token.platform_claims
        match = next((b for b in bound if _bound_to(b, pc.implementation_id, pc.instance_id)), None)
        if match is not None:
            detail = f"implementation-id and instance-id are those {match.source} binds the CPAK to"
        else:
            bad = sorted(
                {
                    name
                    for b in bound
                    for name, want, have in (
                        ("implementation-id", b.implementation_id, pc.implementation_id),
                        ("instance-id", b.instance_id, pc.instance_id),
                    )
                    if want is not None and want != have
                }
            )
            detail = (
                f"{', '.join(bad)} differ(s) from the platform(s) "
                f"{', '.join(b.source for b in bound)} bind(s) this CPAK to"
            )
            unbound = [c.source for c in self.trust.same_key(cpak) if not c.bound]
            if unbound:
                detail += f"; the unbound copy in {', '.join(unbound)} does not lift the binding"
        self.add(
            "cca.platform.cpak-binding",
            match is not None,
            detail,
            observed=f"{pc.implementation_id.hex()} / {pc.instance_id.hex()}",
            expected=" | ".join(
                f"{(b.implementation_id or b'').hex() or '*'} / {(b.instance_id or b'').hex() or '*'}"
                for b in bound
            ),
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

    def platform(self, token: CcaToken) -> None:
        """Steps 7-8: the platform reference record that fits, then each of its values.

        Each record is one good platform state (Veraison platform-rv): a token matches one record
        as a whole, or fails against the record closest to it. The instance-id is a device pin of
        the policy, not part of a record.
        """
        pc = token.platform_claims
        records = self.policy.platforms
        fits: list[_PlatformFit] = []
        for k, ref in enumerate(records):
            fits.append(_fit_platform(k, ref, pc))
            if not fits[-1].failures:
                break  # the first whole match is the one reported
        best = min(fits, key=_PlatformFit.rank) if fits else None
        n = len(records)
        at = None if best is None else best.index
        self.record_value(
            "cca.platform.implementation-id",
            "implementation-id",
            pc.implementation_id,
            [r.implementation_ids for r in records],
            at,
            "platform",
        )
        self.one_of(
            "cca.platform.instance-id", "instance-id", pc.instance_id, self.policy.instance_ids
        )
        self.record_value(
            "cca.platform.config",
            "platform-config",
            pc.config,
            [r.platform_configs for r in records],
            at,
            "platform",
        )
        self.sw_components(token, best, n)
        if best is not None and best.failures:
            self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)
        elif (best is None or not best.ref.sw_components) and self.tv.get(TV_HARDWARE) == int(
            Tier.AFFIRMING
        ):
            # No firmware was compared with a reference value: a trusted CPAK and an accepted
            # lifecycle show genuine hardware, not supported firmware, so the claim is not
            # affirming (AR4SI hardware 2 needs the firmware verified; 32 as the SNP verifier
            # gives a TCB it has nothing to judge against).
            self.tv[TV_HARDWARE] = int(Tier.WARNING)

    def record_value(
        self,
        name: str,
        label: str,
        value: bytes,
        everywhere: Sequence[frozenset[bytes]],
        index: int | None,
        kind: str,
    ) -> None:
        """``value`` against ``everywhere[index]``, the values the chosen reference record of
        ``kind`` accepts (``everywhere`` holds every record's); an empty set, or ``index`` None
        (the policy has no such record), does not constrain."""
        if index is None:
            self.add(name, True, "not constrained by policy", observed=value.hex())
            return
        accepted = everywhere[index]
        which = _which(kind, index, len(everywhere))
        if not accepted:
            self.add(name, True, f"not constrained by policy{which}", observed=value.hex())
            return
        ok = value in accepted
        if ok:
            detail = f"matches {kind} reference {index + 1} of {len(everywhere)}" if which else ""
        else:
            detail = f"{label} is not one the policy accepts{which}"
            if any(value in other for k, other in enumerate(everywhere) if k != index):
                detail += (
                    f"; it is the value of another {kind} reference, but no {kind} reference "
                    "matches as a whole (values of different references never combine)"
                )
        self.add(name, ok, detail, observed=value.hex(), expected=_values(accepted))

    def sw_components(self, token: CcaToken, best: _PlatformFit | None, n: int) -> None:
        comps = token.platform_claims.sw_components
        refs = best.ref.sw_components if best is not None else ()
        which = "" if best is None else _which("platform", best.index, n)
        for i, comp in enumerate(comps):
            observed = _describe(comp)
            name = f"cca.platform.sw-component.{i}"
            if best is None or not refs:
                whose = (
                    "the policy has no platform"
                    if best is None
                    else f"platform reference {best.index + 1} has no sw-component"
                    if which
                    else "the policy has no sw-component"
                )
                self.add(
                    name,
                    True,
                    f"{comp.label()}: not compared: {whose} reference values (so the hardware "
                    "claim is not affirming)",
                    observed,
                )
                continue
            hit = best.hits[i]
            if hit is not None:
                self.add(
                    name,
                    True,
                    f"{comp.label()}: matches the policy{which}",
                    observed,
                    hit.describe(),
                )
                continue
            same_type = [r for r in refs if r.type is not None and r.type == comp.measurement_type]
            self.add(
                name,
                False,
                f"{comp.label()}: measurement/signer not in the policy{which}",
                observed,
                " | ".join(r.describe() for r in (same_type or refs)[:8])
                + (" | …" if len(same_type or refs) > 8 else ""),
            )
        if best is None or not refs:
            return
        named = sorted({r.type for r in refs if r.type is not None})
        untyped = [r.describe() for r in refs if r.type is None]
        self.add(
            "cca.platform.sw-components.complete",
            not best.missing,
            f"missing from the token: {', '.join(best.missing)}{which}"
            + (
                " (every untyped reference must be present: list generations of one component "
                "in separate platform records, or give them a type)"
                if untyped
                else ""
            )
            if best.missing
            else "every component type the policy names, and every untyped reference, is present",
            observed=", ".join(
                [f"{c.label()} {c.measurement_value.hex()}" for c in comps]
                if untyped
                else sorted({c.label() for c in comps})
            ),
            expected=", ".join(named + untyped),
        )

    # -- realm claims -------------------------------------------------------------------------

    def registers(self, token: CcaToken) -> None:
        """Step 9: the realm reference record that fits (one realm-rv, matched whole)."""
        rc = token.realm_claims
        values = {
            "rim": rc.initial_measurement,
            **{f"rem{i}": v for i, v in enumerate(rc.extensible_measurements)},
            "rpv": rc.personalization_value,
        }
        records = self.policy.realms
        index: int | None = None
        if records:
            fits = [
                (k, [n for n, accepted in r.registers.items() if values[n] not in accepted])
                for k, r in enumerate(records)
            ]
            # A whole match first; else the closest record, preferring one whose RIM matches
            # (the RIM identifies the realm, as in Veraison's store lookup).
            index, misses = min(fits, key=lambda f: (bool(f[1]), "rim" in f[1], len(f[1]), f[0]))
            self.tv[TV_EXECUTABLES] = int(Tier.CONTRAINDICATED if misses else Tier.AFFIRMING)
        for name in REGISTER_NAMES:
            self.record_value(
                f"cca.register.{name}",
                name,
                values[name],
                [r.registers.get(name, frozenset()) for r in records],
                index,
                "realm",
            )

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


def _which(kind: str, index: int, count: int) -> str:
    return f" ({kind} reference {index + 1} of {count})" if count > 1 else ""


def _bound_to(cpak: TrustedCpak, implementation_id: bytes, instance_id: bytes) -> bool:
    return (cpak.implementation_id is None or cpak.implementation_id == implementation_id) and (
        cpak.instance_id is None or cpak.instance_id == instance_id
    )


@dataclass(frozen=True, slots=True)
class _PlatformFit:
    """How one platform reference record fits the token."""

    index: int
    ref: PlatformReference
    implementation_ok: bool
    config_ok: bool
    hits: tuple[SwReference | None, ...]  # per token component; () when the record has none
    missing: tuple[str, ...]  # named types and untyped references absent from the token

    @property
    def failures(self) -> int:
        unmatched = sum(h is None for h in self.hits)
        return (not self.implementation_ok) + (not self.config_ok) + unmatched + len(self.missing)

    def rank(self) -> tuple[bool, bool, int, int]:
        # A whole match first; else the closest record, preferring one whose implementation-id
        # matches (Veraison looks platform records up by implementation-id).
        return (self.failures > 0, not self.implementation_ok, self.failures, self.index)


def _fit_platform(index: int, ref: PlatformReference, pc: PlatformClaims) -> _PlatformFit:
    refs, comps = ref.sw_components, pc.sw_components
    hits = tuple(next((r for r in refs if _matches(r, c)), None) for c in comps) if refs else ()
    # Completeness, so that a removed component is caught: every type the record names is
    # present; an untyped reference says nothing of which component it stands for, so its own
    # measurement (and signer-id, when given) must be present.
    present = {c.measurement_type for c in comps}
    missing = sorted({r.type for r in refs if r.type is not None and r.type not in present})
    missing += [
        r.describe() for r in refs if r.type is None and not any(_matches(r, c) for c in comps)
    ]
    return _PlatformFit(
        index=index,
        ref=ref,
        implementation_ok=not ref.implementation_ids
        or pc.implementation_id in ref.implementation_ids,
        config_ok=not ref.platform_configs or pc.config in ref.platform_configs,
        hits=hits,
        missing=tuple(missing),
    )


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
