"""From a CMW to appraisals: undo the freshness tier, then hand each evidence record to the
verifier for its media type.

Sans-IO. The tier is recognised from the CMW's shape (docs/PROTOCOL.md §5.3):

* a record (or a composite collection of evidence records) — ``strict``: each record must carry
  this connection's binder;
* ``{"evidence", "merkle"}`` — ``batched``: the root is recomputed from *our* binder and the
  inclusion proof (RFC 9162 §2.1.3.2) and the evidence must carry that root;
* ``{"evidence", "epoch", "binding"}`` — ``cached``: the epoch must be young enough, the AIK (the
  TLS certificate's key) must have signed our binder together with the epoch digest, and the
  evidence must carry the epoch digest.

Every record must be Evidence and must have a verifier; a record that cannot be appraised fails,
it is never skipped. The accepted tiers and the epoch age come from the policy.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from atls_proxy.errors import DecodeError, VerificationError
from atls_proxy.expat import merkle, schemes
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import IND_EVIDENCE, CMWCollection, CMWRecord, decode_cmw, records
from atls_proxy.expat.tiers import (
    AIK_BINDING_MEDIA_TYPE,
    EPOCH_MEDIA_TYPE,
    Epoch,
    Tier,
    aik_binding_content,
    decode_aik_binding,
    epoch_digest,
)
from atls_proxy.verify.base import Verifier
from atls_proxy.verify.policy import Freshness
from atls_proxy.verify.result import Appraisal, Check

# An epoch that claims to start this far in our future is accepted (clock skew between hosts).
EPOCH_CLOCK_SKEW = 60.0
# A cached appraisal of epoch evidence is reused at most this long, whatever the epoch says, so that
# policy or collateral changes take effect within a minute.
CACHE_MAX_SECONDS = 60.0
CACHE_MAX_ENTRIES = 64
# The batched tier's quote is shared by the members of one batch, which arrive within a quote
# time of each other; its appraisal is reused only that briefly, and only by connections whose own
# binder and inclusion path recomputed the same root.
BATCH_CACHE_SECONDS = 5.0


class AppraisalCache:
    """Remembers *passing* appraisals of identical evidence so a client does not re-verify the same
    quote for every connection: the cached tier's epoch evidence until the epoch expires (at most
    ``CACHE_MAX_SECONDS``), the batched tier's quote for ``BATCH_CACHE_SECONDS``. Keyed by the
    evidence bytes and the report data and AIK hash it was appraised against (for a batch: the
    Merkle root, which only members of that batch recompute); the per-connection checks (tier,
    epoch age, AIK binding, inclusion path) run every time."""

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, tuple[float, list[Check], Appraisal]] = OrderedDict()
        # The verifiers (by identity) and freshness rules the entries were made under.
        self._verifiers: tuple[Verifier, ...] = ()
        self._freshness: Freshness | None = None

    def scope(self, verifiers: Sequence[Verifier], freshness: Freshness) -> None:
        """A verdict is reused only under the verifiers and freshness rules that made it: used
        with others (settings copied with another policy, a reload), the cache forgets what it
        holds. Verifiers are compared by identity — they hold the policy, and a policy loaded
        again is new objects — and kept referenced, so an identity cannot be reused."""
        mine = self._verifiers
        if (
            freshness == self._freshness
            and len(verifiers) == len(mine)
            and all(a is b for a, b in zip(verifiers, mine, strict=True))
        ):
            return
        self._entries.clear()
        self._verifiers = tuple(verifiers)
        self._freshness = freshness

    @staticmethod
    def key(rec: CMWRecord, effective: Binding) -> bytes:
        """Everything the record's appraisal (``_record``) depends on: its media type (a text
        type and a CoAP content-format of the same spelling kept apart), its ``ind`` (a record
        that is not Evidence must fail ``cmw.type`` whatever the cache holds), its value, and
        the binder and AIK hash it is appraised against."""
        mt = rec.media_type
        media = (b"t" + mt.encode()) if isinstance(mt, str) else (b"c" + str(mt).encode())
        ind = b"" if rec.ind is None else str(rec.ind).encode()
        h = hashlib.sha256()
        for part in (media, ind, rec.value, effective.binder, effective.aik_hash):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def get(self, key: bytes, now: float) -> Appraisal | None:
        hit = self._entries.get(key)
        if hit is None or now >= hit[0]:
            self._entries.pop(key, None)
            return None
        _, checks, a = hit
        return Appraisal(
            a.evidence_type, list(checks), a.simulated, a.policy_id, dict(a.trust_vector)
        )

    def put(self, key: bytes, appraisal: Appraisal, until: float) -> None:
        if not appraisal.passed:
            return
        self._entries[key] = (until, list(appraisal.checks), appraisal)
        while len(self._entries) > CACHE_MAX_ENTRIES:
            self._entries.popitem(last=False)


def appraise_cmw(
    cmw_bytes: bytes,
    expected: Binding,
    verifiers: Sequence[Verifier],
    now: float,
    *,
    aik_public_key: CertificatePublicKeyTypes | None = None,
    freshness: Freshness | None = None,
    cache: AppraisalCache | None = None,
    cmw_signed_by_aik: bool = False,
) -> list[Appraisal]:
    """Appraise ``cmw_bytes`` against this connection's ``expected`` binding.

    ``aik_public_key`` is the AIK (the TLS certificate's key) for the cached tier.
    ``cmw_signed_by_aik`` says the caller received these exact bytes inside an RFC 9261
    Certificate message whose CertificateVerify it verified with ``aik_public_key`` on this
    connection (``AuthenticatorValidated.signer``). That signature already covers the binding
    record and the epoch record beside it, over a transcript bound to this connection's exporter
    (RFC 9261 §5.1, §5.2.2), so the cached tier's AIK binding signature proves nothing more to
    this relying party and is not verified a second time; it is there for verifiers that see the
    CMW outside the connection (logs, audits), which call this without the flag.
    """
    fresh = freshness or Freshness()
    if cache is not None:
        cache.scope(verifiers, fresh)
    try:
        cmw = decode_cmw(cmw_bytes)
    except DecodeError as exc:
        return [Appraisal("cmw", [Check("cmw.decode", False, str(exc))])]
    if isinstance(cmw, CMWCollection):
        labels = set(cmw.members)
        if labels == {"evidence", "merkle"}:
            return [_batched(cmw, expected, verifiers, now, fresh, cache)]
        if labels == {"evidence", "epoch", "binding"}:
            return [
                _cached(
                    cmw, expected, verifiers, now, fresh, aik_public_key, cache, cmw_signed_by_aik
                )
            ]
    out = []
    for path, rec in records(cmw):
        a = _record(rec, path, expected, verifiers, now)
        a.checks.insert(0, _tier_check(Tier.STRICT, fresh))
        out.append(a)
    return out


def _tier_check(tier: Tier, fresh: Freshness) -> Check:
    ok = tier in fresh.tiers
    return Check(
        "freshness.tier",
        ok,
        "" if ok else "the policy does not accept this freshness tier",
        observed=tier.value,
        expected=_accepted_tiers(fresh.tiers),
    )


@functools.lru_cache(maxsize=16)
def _accepted_tiers(tiers: frozenset[Tier]) -> str:
    """The policy's tiers as the check reports them; a policy has one set, so once per set."""
    return " | ".join(sorted(t.value for t in tiers))


def _record(
    rec: CMWRecord, path: str, expected: Binding, verifiers: Sequence[Verifier], now: float
) -> Appraisal:
    where = f" at {path}" if path else ""
    media = (
        rec.media_type
        if isinstance(rec.media_type, str)
        else f"coap-content-format {rec.media_type}"
    )
    if rec.ind is not None and not rec.ind & IND_EVIDENCE:
        return Appraisal(
            media,
            [Check("cmw.type", False, f"record{where} is not Evidence", observed=f"ind={rec.ind}")],
        )
    verifier = next((v for v in verifiers if v.accepts(media)), None)
    if verifier is None:
        return Appraisal(
            media,
            [
                Check(
                    "cmw.media-type",
                    False,
                    f"no verifier configured for this evidence{where}",
                    observed=media,
                )
            ],
        )
    appraisal = verifier.appraise(media, rec.value, expected, now)
    appraisal.checks.insert(
        0, Check("cmw.media-type", True, f"evidence record{where} has a verifier", observed=media)
    )
    return appraisal


def _member(cmw: CMWCollection, label: str, media_type: str | None) -> CMWRecord:
    rec = cmw.members[label]
    if not isinstance(rec, CMWRecord):
        raise DecodeError(f"CMW member {label!r} must be a record")
    if media_type is not None and rec.media_type != media_type:
        raise DecodeError(f"CMW member {label!r} must have media type {media_type}")
    return rec


def _failed(tier_check: Check, name: str, detail: str) -> Appraisal:
    return Appraisal("cmw", [tier_check, Check(name, False, detail)])


def _batched(
    cmw: CMWCollection,
    expected: Binding,
    verifiers: Sequence[Verifier],
    now: float,
    fresh: Freshness,
    cache: AppraisalCache | None,
) -> Appraisal:
    tier = _tier_check(Tier.BATCHED, fresh)
    try:
        evidence = _member(cmw, "evidence", None)
        proof = merkle.InclusionProof.decode(
            _member(cmw, "merkle", merkle.MERKLE_PROOF_MEDIA_TYPE).value
        )
        root = merkle.root_from_proof(expected.hash_name, expected.binder, proof)
    except DecodeError as exc:
        return _failed(tier, "evidence.merkle", str(exc))
    pre = [
        tier,
        Check(
            "evidence.merkle",
            True,
            f"root recomputed from this connection's binder as leaf {proof.index} of {proof.size}",
            observed=root.hex(),
        ),
    ]
    effective = Binding(expected.hash_name, root, expected.aik_hash)
    appraisal = _shared(evidence, effective, verifiers, now, cache, now + BATCH_CACHE_SECONDS)
    appraisal.checks[0:0] = pre
    return appraisal


def _cached(
    cmw: CMWCollection,
    expected: Binding,
    verifiers: Sequence[Verifier],
    now: float,
    fresh: Freshness,
    aik_public_key: CertificatePublicKeyTypes | None,
    cache: AppraisalCache | None,
    signed_by_aik: bool,
) -> Appraisal:
    tier = _tier_check(Tier.CACHED, fresh)
    try:
        evidence = _member(cmw, "evidence", None)
        raw_epoch = _member(cmw, "epoch", EPOCH_MEDIA_TYPE).value
        epoch = Epoch.decode(raw_epoch)
        scheme, sig = decode_aik_binding(_member(cmw, "binding", AIK_BINDING_MEDIA_TYPE).value)
    except DecodeError as exc:
        return _failed(tier, "evidence.epoch", str(exc))
    age = now - epoch.start
    young = epoch.start - EPOCH_CLOCK_SKEW <= now < epoch.expires and age <= fresh.max_epoch_age
    epoch_check = Check(
        "freshness.epoch-age",
        young,
        "" if young else "the epoch evidence is expired or older than the policy allows",
        observed=f"{age:.0f} s (epoch {epoch.start}..{epoch.expires})",
        expected=f"<= {fresh.max_epoch_age:g} s and before expiry",
    )
    digest = epoch_digest(expected.hash_name, raw_epoch)
    if aik_public_key is None:
        binding_check = Check(
            "evidence.aik-binding", False, "no AIK public key to check the binding with"
        )
    elif signed_by_aik:
        fits = scheme in schemes.schemes_for_key(aik_public_key)
        binding_check = Check(
            "evidence.aik-binding",
            fits,
            "the AIK signed this CMW on this connection: the authenticator's CertificateVerify "
            "(RFC 9261 §5.2.2) covers it; the record's own signature is not verified again"
            if fits
            else "the binding record's scheme does not fit the AIK",
            observed=schemes.scheme_name(scheme),
        )
    else:
        try:
            schemes.verify(
                aik_public_key, scheme, sig, aik_binding_content(expected.binder, digest)
            )
            binding_check = Check(
                "evidence.aik-binding",
                True,
                "the AIK signed this connection's binder with the epoch",
                observed=schemes.scheme_name(scheme),
            )
        except VerificationError as exc:
            binding_check = Check(
                "evidence.aik-binding", False, exc.message, observed=schemes.scheme_name(scheme)
            )
    if not binding_check.passed:
        return Appraisal("cmw", [tier, epoch_check, binding_check])
    effective = Binding(expected.hash_name, digest, expected.aik_hash)
    until = min(float(epoch.expires), now + CACHE_MAX_SECONDS)
    appraisal = _shared(evidence, effective, verifiers, now, cache, until)
    appraisal.checks[0:0] = [tier, epoch_check, binding_check]
    return appraisal


def _shared(
    evidence: CMWRecord,
    effective: Binding,
    verifiers: Sequence[Verifier],
    now: float,
    cache: AppraisalCache | None,
    until: float,
) -> Appraisal:
    """Appraise evidence that several connections share (a batch's quote, an epoch's quote)
    against ``effective``, through ``cache`` until ``until`` when there is one. The caller adds
    its per-connection checks in front of the returned (fresh or copied) appraisal."""
    if cache is None:
        return _record(evidence, "evidence", effective, verifiers, now)
    key = AppraisalCache.key(evidence, effective)
    appraisal = cache.get(key, now)
    if appraisal is None:
        appraisal = _record(evidence, "evidence", effective, verifiers, now)
        cache.put(key, appraisal, until)
    return appraisal
