"""TPM 2.0 attester: TPM2_Quote over PCRs with an attestation key, through tpm2-pytss (ESAPI).

Theory of operation
-------------------
A TPM proves platform state by signing a quote: TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (TPM 2.0
Library Part 2 §10.12.12), which carries the caller's qualifying data as ``extraData`` and, in
TPMS_QUOTE_INFO (§10.12.4), the PCR selection and ``pcrDigest``, the hash of the selected PCR
values (Part 3 §18.4 TPM2_Quote). The signer is an attestation key (AK): a *restricted* signing
key (TPMA_OBJECT ``restricted`` + ``sign``, Part 2 §8.3.3.1), which the TPM only lets sign digests
it produced itself, so it cannot be made to sign a forged TPMS_ATTEST.

The AK (``_TpmSession.open``), one of:

* **a primary key made at start-up** (no ``ak_handle``): TPM2_CreatePrimary (Part 3 §24.1) under
  the endorsement (default) or owner hierarchy from a fixed template. A primary key is derived
  from the hierarchy's seed and the template, so the same TPM yields the same AK at every start
  until the seed changes (TPM2_Clear for owner, TPM2_ChangeEPS for endorsement): an operator
  exports its public key once (``atls-proxy tpm-ak``) and trusts it. It is flushed
  (TPM2_FlushContext, Part 3 §28.4) on ``close`` and at interpreter exit, unless a TPM command
  is still running then (below).
* **a persistent key** at ``ak_handle`` (0x81000000-0x817FFFFF, owner persistent range, Part 2
  §7.4): read with TPM2_ReadPublic (Part 3 §12.4). With ``create_ak`` a missing key is created as
  above and made persistent with TPM2_EvictControl (Part 3 §28.5, owner authorisation). A key
  already at the handle is never replaced; it must be a fixedTPM restricted signing key without
  ``decrypt`` of the configured algorithm, whose scheme (RSASSA, RSAPSS or ECDSA) hashes with
  SHA-256, SHA-384 or SHA-512 as verifiers require, or opening fails.

The template (Part 2 §12.2.4 TPMT_PUBLIC): ECC NIST P-256 with ECDSA/SHA-256 (default) or RSA-2048
with RSASSA/SHA-256, nameAlg SHA-256, attributes fixedTPM, fixedParent, sensitiveDataOrigin,
userWithAuth, noDA, restricted, sign; empty authValue and policy; no symmetric algorithm. The
hierarchy authorisations (endorsement, owner) are assumed empty, as on a fresh TPM; a TPM whose
owner has set them needs an AK provisioned with the owner's tools, at ``ak_handle``.

One quote (``_TpmSession.quote``), in a worker thread:

1. TPM2_PCR_Read (Part 3 §22.4) of the configured PCRs of one bank, at most 8 per command (a
   TPML_DIGEST holds 8 digests, Part 2 §10.9.2); the TPM may return fewer than asked, so the rest
   is asked again, and ``pcrUpdateCounter`` must not move between the reads.
2. TPM2_Quote (Part 3 §18.4) with qualifyingData =
   ``atls_proxy.verify.tpm.qualifying_data(binding)`` — 32 bytes covering the binder *and* the
   AIK hash (docs/PROTOCOL.md §3) — and the same PCR selection.
3. Self-check, as the verifier will: the TPMS_ATTEST parses as a quote, carries our qualifying
   data and selection, and its signature verifies with the AK's public key. Its pcrDigest must be
   H(values read in 1), H the signing scheme's hash. A PCR extended between 1 and 2 makes it
   differ: the attempt is repeated (``PCR_RACE_RETRIES`` times), never sent.
4. The evidence: the CBOR map of ``atls_proxy.verify.tpm.evidence`` (TPMS_ATTEST, TPMT_SIGNATURE,
   the PCR values, the bank and the AK's SubjectPublicKeyInfo as the key-5 hint), media type
   ``atls_proxy.verify.tpm.MEDIA_TYPE``.

Concurrency. ESAPI contexts are not thread-safe and TPM commands block (a quote is milliseconds
on a software TPM and tens of ms to a second on a hardware one; TPM2_CreatePrimary of an RSA key
can take tens of seconds), so every TPM operation — an open, a quote, a close — runs in a thread
that holds the attester's ``threading.Lock`` (the TPM lock) for the whole operation: never two at
once, whoever started them. ``attest`` runs its calls through ``blocking.SerialThreadCalls``: an
``asyncio.Lock`` orders callers, each call runs in a daemon thread, and a call whose caller timed
out keeps the TPM until it returns (the next caller waits for it inside its own timeout instead of
starting a second TPM command beside it).

The session's state (open, or to be reopened) is decided only by the thread that ran the TPM
operation, from that operation's own outcome, under the TPM lock. The event loop never changes it:
a caller that times out reports the step it was waiting for (``_TpmSession._action``, or the wait
for the lock / for an abandoned call) and leaves; when the abandoned thread later succeeds, the
session is as good as before, and when it fails, its own failure decides as below.

One ``attest`` is one quote call under ``timeout``; a quote call finds the session open or returns
at once (no TPM command) saying it needs opening, and only then ``attest`` runs an open call
(connect, capabilities, load or create the AK: a reopen may re-create a primary AK) under
``open_timeout``, then the quote call again. So re-creating the AK is never cut short by the
quote's ``timeout``: the attester alone may take up to ``open_timeout`` + ``timeout`` for the
call that reopens. Behind the evidence engine (attest/engine.py) a connection waits at most the
engine's ``quote_timeout``: when a reopen takes longer, that connection fails, the reopen goes on
in its thread (holding the TPM lock, so nothing else starts meanwhile) and the quotes after it
find the session open.

Failures. Every failure — TCTI I/O (TPM gone), a TPM error code, a timeout, a quote that fails the
self-check, PCRs that keep moving — raises ``AttestationUnavailable`` with the step, the TCTI and
a hint. Only a failure that means the session is unusable marks it broken, so that the next call
closes and reopens it (and a TPM that comes back is used again): a TSS error from any layer but
the TPM's (TCTI I/O, ESAPI/SAPI state or marshalling: ``_session_lost``), a TPM error saying the
TPM was reset or the AK's handle is gone (TPM_RC_INITIALIZE, TPM_RC_HANDLE, TPM_RC_REFERENCE_H*),
a quote that does not verify with the AK read at open, or an unexpected exception. A call whose
thread is stuck in the TPM holds the lock; its eventual outcome decides by the same rule. Any
other TPM error code, a malformed answer and a PCR race fail that one quote and keep the session
and its AK. TPM_RC_RETRY, YIELDED and TESTING (Part 2 §6.6.3 warnings) are retried briefly.

``open()`` (start-up, ``tpm-ak``) runs in a daemon thread too, waited for at most
``open_timeout`` seconds (``blocking.call_with_deadline``), so a TPM that never answers fails
start-up instead of hanging it. ``close`` waits at most ``timeout`` seconds for the TPM lock, the
exit-time close ``EXIT_CLOSE_WAIT``: when an abandoned call still holds it, the session is not
closed under it and the TCTI is left to process exit.

``simulated`` is False: a TPM is a hardware root of trust. A *software* TPM (swtpm, libtpms) is
not, and nothing here can tell: the verifier recognises libtpms's firmwareVersion and refuses it
unless the client's policy sets ``allow_software_tpm`` (docs/VERIFIERS-TPM.md).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atls_proxy.attest.base import Evidence
from atls_proxy.attest.blocking import CallPhase, SerialThreadCalls, call_with_deadline
from atls_proxy.errors import AttestationUnavailable, DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.tpm.evidence import TpmEvidence, encode_evidence
from atls_proxy.verify.tpm.policy import DEFAULT_SIGNATURE_HASHES
from atls_proxy.verify.tpm.structures import (
    HASH_ALGS,
    HASH_IDS,
    HASH_SIZES,
    SIG_SCHEMES,
    parse_quote,
    parse_signature,
)
from atls_proxy.verify.tpm.trust import AkKey, ak_fingerprint, spki_der
from atls_proxy.verify.tpm.verifier import (
    MEDIA_TYPE,
    QUALIFYING_DATA_SIZE,
    pcr_digest,
    qualifying_data,
    verify_quote_signature,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AK_ALGORITHMS",
    "DEFAULT_PCRS",
    "DEFAULT_PCR_BANK",
    "HIERARCHIES",
    "AkInfo",
    "TpmAttester",
    "TpmStats",
    "parse_handle",
    "read_ak",
]

AkAlgorithm = Literal["ecc-p256", "rsa-2048"]
Hierarchy = Literal["endorsement", "owner"]
AK_ALGORITHMS: tuple[AkAlgorithm, ...] = ("ecc-p256", "rsa-2048")
HIERARCHIES: tuple[Hierarchy, ...] = ("endorsement", "owner")

# PCRs 0-7 are the platform firmware's SRTM measurements in the TCG PC Client Platform Firmware
# Profile (0 firmware code, 1 its configuration, 2-3 option ROMs, 4-5 boot manager and its
# configuration / GPT, 6 platform events, 7 Secure Boot policy). Everything after that (8-15 OS
# and boot loader, 16 debug, 17-22 DRTM, 23 application) depends on the OS: add it explicitly.
DEFAULT_PCRS: tuple[int, ...] = tuple(range(8))
DEFAULT_PCR_BANK = "sha256"
# A PC Client TPM has 24 PCRs (TCG PC Client Platform TPM Profile); the TPM's own allocation is
# checked when the session opens.
PCR_COUNT = 24
# TPML_DIGEST holds at most 8 digests (Part 2 §10.9.2), so TPM2_PCR_Read returns at most 8 values.
PCR_READ_CHUNK = 8
# PCR_Read may return fewer values than asked; this bounds the re-asks for one set of PCRs.
MAX_PCR_READS = PCR_COUNT
# A PCR extended between the read and the quote: repeat the pair this many more times.
PCR_RACE_RETRIES = 3
# TPM_RC_RETRY / YIELDED / TESTING: "try again"; a few short back-offs.
TPM_BUSY_RETRIES = 3
TPM_BUSY_BACKOFF = 0.05
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0
# open() (connect, read capabilities, load or create the AK) is bounded by open_timeout, by default
# max(timeout, OPEN_TIMEOUT_FLOOR): TPM2_CreatePrimary of an RSA key makes the TPM search for
# primes, which takes tens of seconds on some hardware TPMs, far more than one quote.
OPEN_TIMEOUT_FLOOR = 60.0
# At interpreter exit the session is finalized only if the TPM lock is free within this time: an
# abandoned (timed-out) call may still be inside Esys with the context, which is not thread-safe.
EXIT_CLOSE_WAIT = 2.0
# Owner persistent handles (Part 2 §7.4: TPM_HT_PERSISTENT 0x81; 0x81800000 and up: platform).
PERSISTENT_MIN = 0x81000000
PERSISTENT_MAX = 0x817FFFFF

# TPM_PT values (Part 2 §6.13): PT_FIXED + 32.
_TPM_PT_MAX_DIGEST = 0x120
# TPM_RC (Part 2 §6.6): format-zero warnings that mean "busy, try again", and errors with hints.
_RC_RETRY, _RC_YIELDED, _RC_TESTING = 0x922, 0x908, 0x90A
_RC_OBJECT_MEMORY, _RC_LOCKOUT = 0x902, 0x921
_RC_HANDLE, _RC_BAD_AUTH, _RC_AUTH_FAIL = 0x08B, 0x0A2, 0x08E
_RC_NV_SPACE, _RC_NV_DEFINED, _RC_HIERARCHY = 0x14B, 0x14C, 0x085
# TPM errors that mean the session's objects are gone: the TPM was restarted without our session
# (TPM_RC_INITIALIZE), or the AK's handle no longer names a loaded object (TPM_RC_HANDLE, format
# one; TPM_RC_REFERENCE_H0..H6, warnings).
_RC_INITIALIZE = 0x100
_RC_REFERENCE_H0, _RC_REFERENCE_H6 = 0x910, 0x916
_TSS2_RC_LAYER_MASK = 0xFF << 16
_TSS2_TCTI_RC_LAYER = 10 << 16
# TPM response codes: from the TPM itself, or passed on by a resource manager (tabrmd).
_TSS2_TPM_RC_LAYER = 0
_TSS2_RESMGR_TPM_RC_LAYER = 11 << 16
_RC_FMT1 = 0x080
# The phases of SerialThreadCalls before a call runs (for time-out messages).
_LOCK_PHASE = "waiting for the TPM lock"
_ABANDONED_PHASE = "waiting for an abandoned TPM command that is still running"

_T = TypeVar("_T")


def parse_handle(value: int | str) -> int:
    """A persistent handle from an int or text (``0x81010002``); ``ValueError`` if out of range."""
    if isinstance(value, bool):
        raise ValueError("a persistent handle is a number such as 0x81010002")
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ValueError(f"{value!r} is not a number such as 0x81010002") from None
    if not PERSISTENT_MIN <= value <= PERSISTENT_MAX:
        raise ValueError(
            f"0x{value:x} is not an owner persistent handle "
            f"(0x{PERSISTENT_MIN:08x}..0x{PERSISTENT_MAX:08x}, TPM 2.0 Part 2 §7.4)"
        )
    return value


@dataclass(frozen=True, slots=True)
class AkInfo:
    """The attestation key in use."""

    public_key: AkKey
    algorithm: AkAlgorithm
    # The persistent handle, or None for a primary key made at start-up.
    handle: int | None
    # True when this session created the key (primary, and made persistent when handle is set).
    created: bool

    @property
    def spki(self) -> bytes:
        return spki_der(self.public_key)

    @property
    def fingerprint(self) -> str:
        """What the verifier reports for this AK (``tpm.ak.trusted``)."""
        return ak_fingerprint(self.public_key)


@dataclass(slots=True)
class TpmStats:
    """Counters for the metrics layer (names are not public API until the metrics issue)."""

    quotes: int = 0
    failures: int = 0
    timeouts: int = 0
    pcr_races: int = 0
    busy_retries: int = 0
    opens: int = 0
    last_quote_seconds: float = 0.0


# --- tpm2-pytss ----------------------------------------------------------------------------------


def _pytss() -> Any:
    """The tpm2_pytss package, imported on first use (it is an optional dependency)."""
    # The TSS logs every failed command to stderr itself; our errors say the same in one line.
    # An operator who wants the TSS's own log sets TSS2_LOG (e.g. "all+debug").
    os.environ.setdefault("TSS2_LOG", "all+none")
    try:
        import tpm2_pytss  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:  # also a missing libtss2 shared library
        raise AttestationUnavailable(
            f"tpm: tpm2-pytss is not usable ({exc}); install it with "
            "`pip install 'atls-proxy[tpm]'` (it needs libtss2, e.g. Debian's libtss2-dev)"
        ) from None
    return tpm2_pytss


def _describe(exc: BaseException, action: str, tcti: str) -> str:
    """One line naming the operation, the TCTI, the TSS error and a hint."""
    pytss = _pytss()
    if not isinstance(exc, pytss.TSS2_Exception):
        return f"tpm: {action} via {tcti!r} failed: {type(exc).__name__}: {exc}"
    rc = int(exc.rc)
    error = _tpm_error(exc)
    hint = ""
    if rc & _TSS2_RC_LAYER_MASK == _TSS2_TCTI_RC_LAYER:
        hint = "is the TPM reachable (swtpm running, /dev/tpmrm0 present and accessible)?"
    elif error == _RC_OBJECT_MEMORY:
        hint = (
            "the TPM has no free object slot: use a resource manager (device:/dev/tpmrm0 or "
            "tabrmd) or a persistent AK (ak_handle)"
        )
    elif error == _RC_LOCKOUT:
        hint = "the TPM is in dictionary-attack lockout"
    elif error in (_RC_BAD_AUTH, _RC_AUTH_FAIL):
        hint = (
            "the hierarchy has an authorisation value; provision the AK with the owner's tools "
            "and configure its persistent handle (ak_handle) instead"
        )
    elif error == _RC_HIERARCHY:
        hint = "the hierarchy is disabled"
    elif error in (_RC_NV_SPACE, _RC_NV_DEFINED):
        hint = "no room for another persistent object, or the handle is taken"
    detail = f"{exc} (TSS rc 0x{rc:08x})"
    return f"tpm: {action} via {tcti!r} failed: {detail}" + (f"; {hint}" if hint else "")


def _tpm_error(exc: BaseException) -> int | None:
    """The TPM's response code in a ``TSS2_Exception`` (handle, parameter and session stripped),
    whether the TPM answered directly or through a resource manager (tabrmd: layer 11); None
    for an error of another layer (TCTI, ESAPI, ...). pytss's ``error`` keeps the layer bits of a
    format-0 code, so they are masked here: 0xB0922 is the TPM's RETRY passed on by tabrmd."""
    rc = int(exc.rc)  # type: ignore[attr-defined]  # a TSS2_Exception (pytss is untyped)
    if rc & _TSS2_RC_LAYER_MASK not in (_TSS2_TPM_RC_LAYER, _TSS2_RESMGR_TPM_RC_LAYER):
        return None
    return int(exc.error) & 0xFFFF  # type: ignore[attr-defined]


def _is_busy(exc: BaseException) -> bool:
    pytss = _pytss()
    return isinstance(exc, pytss.TSS2_Exception) and _tpm_error(exc) in (
        _RC_RETRY,
        _RC_YIELDED,
        _RC_TESTING,
    )


def _session_lost(exc: BaseException) -> bool:
    """Whether a failure leaves the session unusable, so that the next call reopens it (module
    docstring, Failures). A TPM error code about the command, or a malformed answer, does not."""
    pytss = _pytss()
    if isinstance(exc, ValueError):
        return False  # our checks of the TPM's answer (PCR_Read); the connection is fine
    if not isinstance(exc, pytss.TSS2_Exception):
        return True  # unexpected: the context's state is unknown
    rc = int(exc.rc)
    if rc & _TSS2_RC_LAYER_MASK not in (_TSS2_TPM_RC_LAYER, _TSS2_RESMGR_TPM_RC_LAYER):
        return True  # TCTI I/O, or ESAPI/SAPI/marshalling: the context may be mid-command
    code = rc & 0xFFFF
    if code & _RC_FMT1:
        code = _RC_FMT1 | (code & 0x3F)  # drop the handle/parameter/session number
    return code in (_RC_INITIALIZE, _RC_HANDLE) or _RC_REFERENCE_H0 <= code <= _RC_REFERENCE_H6


def _ak_template(algorithm: AkAlgorithm) -> Any:
    """TPM2B_PUBLIC of the AK (module docstring; Part 2 §12.2.4, §12.2.3.5/6, §8.3)."""
    p = _pytss()
    pub = p.TPMT_PUBLIC()
    pub.nameAlg = p.TPM2_ALG.SHA256
    pub.objectAttributes = (
        p.TPMA_OBJECT.FIXEDTPM
        | p.TPMA_OBJECT.FIXEDPARENT
        | p.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | p.TPMA_OBJECT.USERWITHAUTH
        | p.TPMA_OBJECT.NODA
        | p.TPMA_OBJECT.RESTRICTED
        | p.TPMA_OBJECT.SIGN_ENCRYPT
    )
    if algorithm == "ecc-p256":
        pub.type = p.TPM2_ALG.ECC
        pub.parameters.eccDetail.symmetric.algorithm = p.TPM2_ALG.NULL
        pub.parameters.eccDetail.scheme.scheme = p.TPM2_ALG.ECDSA
        pub.parameters.eccDetail.scheme.details.ecdsa.hashAlg = p.TPM2_ALG.SHA256
        pub.parameters.eccDetail.curveID = p.TPM2_ECC.NIST_P256
        pub.parameters.eccDetail.kdf.scheme = p.TPM2_ALG.NULL
    else:
        pub.type = p.TPM2_ALG.RSA
        pub.parameters.rsaDetail.symmetric.algorithm = p.TPM2_ALG.NULL
        pub.parameters.rsaDetail.scheme.scheme = p.TPM2_ALG.RSASSA
        pub.parameters.rsaDetail.scheme.details.rsassa.hashAlg = p.TPM2_ALG.SHA256
        pub.parameters.rsaDetail.keyBits = 2048
        pub.parameters.rsaDetail.exponent = 0
    return p.TPM2B_PUBLIC(pub)


def _public_key(area: Any) -> tuple[AkKey, AkAlgorithm]:
    """The cryptography key of a TPMT_PUBLIC (ECC P-256 or RSA-2048); ``ValueError`` otherwise."""
    p = _pytss()
    if area.type == p.TPM2_ALG.ECC:
        if area.parameters.eccDetail.curveID != p.TPM2_ECC.NIST_P256:
            raise ValueError("an ECC AK must be on NIST P-256")
        x = bytes(area.unique.ecc.x)
        y = bytes(area.unique.ecc.y)
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        )
        return numbers.public_key(), "ecc-p256"
    if area.type == p.TPM2_ALG.RSA:
        bits = int(area.parameters.rsaDetail.keyBits)
        if bits != 2048:
            raise ValueError(f"an RSA AK must be RSA-2048, this one is RSA-{bits}")
        exponent = int(area.parameters.rsaDetail.exponent) or 65537  # 0 = 2^16 + 1 (§12.2.3.5)
        n = int.from_bytes(bytes(area.unique.rsa), "big")
        return rsa.RSAPublicNumbers(exponent, n).public_key(), "rsa-2048"
    raise ValueError(f"an AK is ECC or RSA, this key's type is 0x{int(area.type):04x}")


def _scheme_problem(scheme: int, hash_alg: int) -> str | None:
    """Why verifiers would refuse every quote signed with this scheme and hash (TPM_ALG_IDs), or
    None. The verifier parses RSASSA, RSAPSS and ECDSA signatures (``SIG_SCHEMES``) and by default
    accepts their hash only from ``DEFAULT_SIGNATURE_HASHES`` (no SHA-1)."""
    scheme_name = SIG_SCHEMES.get(scheme, f"scheme 0x{scheme:04x}")
    hash_name = HASH_ALGS[hash_alg][0] if hash_alg in HASH_ALGS else f"hash 0x{hash_alg:04x}"
    accepted = sorted(DEFAULT_SIGNATURE_HASHES)
    if scheme not in SIG_SCHEMES:
        return (
            f"signs with {scheme_name}/{hash_name}; verifiers accept "
            f"{', '.join(SIG_SCHEMES.values())} signatures only"
        )
    if hash_name not in DEFAULT_SIGNATURE_HASHES:
        return (
            f"signs with {scheme_name}/{hash_name}; verifiers accept {', '.join(accepted)} "
            "signature hashes only (create an AK with a SHA-256 scheme)"
        )
    return None


def _check_ak_attributes(area: Any) -> None:
    """An AK must be a fixedTPM restricted signing key that cannot decrypt (Part 2 §8.3.3.1)."""
    p = _pytss()
    attrs = int(area.objectAttributes)
    need = {
        "fixedTPM": int(p.TPMA_OBJECT.FIXEDTPM),
        "restricted": int(p.TPMA_OBJECT.RESTRICTED),
        "sign": int(p.TPMA_OBJECT.SIGN_ENCRYPT),
    }
    missing = [name for name, bit in need.items() if not attrs & bit]
    if missing:
        raise ValueError(f"not an attestation key: {', '.join(missing)} not set")
    if attrs & int(p.TPMA_OBJECT.DECRYPT):
        raise ValueError("not an attestation key: it can also decrypt")


# --- the blocking session ----------------------------------------------------------------------


class _TpmSession:
    """One ESAPI context and its AK. Blocking; never used by two threads at once."""

    def __init__(
        self,
        tcti: str,
        *,
        ak_handle: int | None,
        create_ak: bool,
        hierarchy: Hierarchy,
        ak_algorithm: AkAlgorithm,
        pcrs: tuple[int, ...],
        pcr_bank: str,
        stats: TpmStats,
        lock: threading.Lock,
    ) -> None:
        self.tcti = tcti
        self.ak_handle = ak_handle
        self.create_ak = create_ak
        self.hierarchy = hierarchy
        self.ak_algorithm = ak_algorithm
        self.pcrs = pcrs
        self.pcr_bank = pcr_bank
        self.stats = stats
        self._lock = lock  # the attester's TPM lock; held by every caller but the exit hook
        self.ak: AkInfo | None = None
        self.broken = False
        self._esapi: Any = None
        self._ak_tr: Any = None
        self._flush_ak = False
        self._scheme: Any = None
        self._atexit = False
        self._action = "quoting"

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether quotes can use the session as it is (read under the TPM lock)."""
        return not self.broken and self._esapi is not None and self.ak is not None

    def open(self) -> AkInfo:
        """Connect, check the TPM and load or create the AK, unless the session is open; a broken
        session is closed first. Blocking; under the TPM lock."""
        if self.broken:
            self.close()
        if self._esapi is not None and self.ak is not None:
            return self.ak
        p = _pytss()
        # self._action names the step for errors and for TpmAttester.open's time-out message.
        self._action = "connecting"
        try:
            self._esapi = p.ESAPI(self.tcti)
            self.stats.opens += 1
            self._action = "reading capabilities"
            self._check_capabilities()
            self._action = "loading the AK"
            self.ak = self._load_or_create_ak()
        except AttestationUnavailable:
            self.close()
            raise
        except Exception as exc:  # TSS errors, and anything unexpected: nothing half-open stays
            self.close()
            raise AttestationUnavailable(_describe(exc, self._action, self.tcti)) from None
        if not self._atexit:
            # Not self.close: atexit calls it without the lock, possibly while an abandoned
            # call's thread is still inside Esys with this context (_close_at_exit).
            atexit.register(self._close_at_exit)
            self._atexit = True
        return self.ak

    def close(self) -> None:
        """Flush a primary AK made here and finalize the context; never raises."""
        esapi, self._esapi = self._esapi, None
        tr, self._ak_tr = self._ak_tr, None
        flush, self._flush_ak = self._flush_ak, False
        self.ak = None
        self.broken = False
        if self._atexit:
            atexit.unregister(self._close_at_exit)
            self._atexit = False
        if esapi is None:
            return
        if flush and tr is not None:
            try:
                esapi.flush_context(tr)
            except Exception as exc:  # the TPM may be gone; the key dies with its next reset
                logger.debug("tpm: flushing the AK failed: %s", exc)
        with contextlib.suppress(Exception):
            esapi.close()

    def close_when_free(self, wait: float, when: str) -> None:
        """``close`` under the TPM lock, or not at all when the lock stays busy for ``wait`` s
        (an abandoned call is still inside Esys with this context, which is not thread-safe):
        the process exit then releases the TCTI, and a primary AK stays loaded until the
        resource manager or a TPM reset flushes it. ``when`` ends the warning's first clause."""
        if not self._lock.acquire(timeout=wait):
            logger.warning(
                "tpm: a TPM command via %r is still running %s; not closing the session, the "
                "TCTI is left to process exit",
                self.tcti,
                when,
            )
            return
        try:
            self.close()
        finally:
            self._lock.release()

    def _close_at_exit(self) -> None:
        self.close_when_free(EXIT_CLOSE_WAIT, "at exit")

    def _check_capabilities(self) -> None:
        p = _pytss()
        _, cap = self._esapi.get_capability(p.TPM2_CAP.TPM_PROPERTIES, _TPM_PT_MAX_DIGEST, 1)
        props = cap.data.tpmProperties
        for i in range(int(props.count)):
            prop = props.tpmProperty[i]
            if int(prop.property) == _TPM_PT_MAX_DIGEST and int(prop.value) < QUALIFYING_DATA_SIZE:
                raise AttestationUnavailable(
                    f"tpm: the TPM at {self.tcti!r} has no hash of at least "
                    f"{QUALIFYING_DATA_SIZE} bytes (largest digest {int(prop.value)} bytes): "
                    "its TPM2B_DATA cannot hold the qualifying data"
                )
        _, cap = self._esapi.get_capability(p.TPM2_CAP.PCRS, 0, 1)
        assigned = cap.data.assignedPCR
        want = HASH_IDS[self.pcr_bank]
        for i in range(int(assigned.count)):
            sel = assigned.pcrSelections[i]
            if int(sel.hash) != want:
                continue
            have = _selected(bytes(sel.pcrSelect)[: int(sel.sizeofSelect)])
            absent = [n for n in self.pcrs if n not in have]
            if absent:
                raise AttestationUnavailable(
                    f"tpm: the TPM at {self.tcti!r} has no PCR(s) {_pcr_list(absent)} in its "
                    f"{self.pcr_bank} bank"
                )
            return
        raise AttestationUnavailable(
            f"tpm: the TPM at {self.tcti!r} has no {self.pcr_bank} PCR bank allocated "
            "(tpm2_pcrallocate changes the allocation)"
        )

    def _load_or_create_ak(self) -> AkInfo:
        p = _pytss()
        handle = self.ak_handle
        if handle is not None:
            try:
                tr = self._esapi.tr_from_tpmpublic(handle)
            except p.TSS2_Exception as exc:
                if int(exc.error) != _RC_HANDLE:
                    raise
                if not self.create_ak:
                    raise AttestationUnavailable(
                        f"tpm: no key at persistent handle 0x{handle:08x} of {self.tcti!r}; "
                        f"create it with `atls-proxy tpm-ak --tcti {self.tcti} --handle "
                        f"0x{handle:08x} --create --out ak.pem` or set create_ak = true"
                    ) from None
            else:
                self._ak_tr = tr
                return self._adopt(created=False, where=f"persistent handle 0x{handle:08x}")
        primary = p.ESYS_TR.ENDORSEMENT if self.hierarchy == "endorsement" else p.ESYS_TR.OWNER
        self._action = "creating the AK"
        tr, *_ = self._esapi.create_primary(None, _ak_template(self.ak_algorithm), primary)
        self._ak_tr, self._flush_ak = tr, True
        if handle is not None:
            persistent = self._esapi.evict_control(p.ESYS_TR.OWNER, tr, handle)
            self._esapi.flush_context(tr)
            self._ak_tr, self._flush_ak = persistent, False
            logger.info("tpm: created the AK and made it persistent at 0x%08x", handle)
        where = f"persistent handle 0x{handle:08x}" if handle else f"{self.hierarchy} hierarchy"
        return self._adopt(created=True, where=where)

    def _adopt(self, *, created: bool, where: str) -> AkInfo:
        p = _pytss()
        public, _, _ = self._esapi.read_public(self._ak_tr)
        area = public.publicArea
        try:
            _check_ak_attributes(area)
            key, algorithm = _public_key(area)
        except ValueError as exc:
            raise AttestationUnavailable(f"tpm: the key at {where}: {exc}") from None
        if algorithm != self.ak_algorithm:
            raise AttestationUnavailable(
                f"tpm: the key at {where} is {algorithm}, the configuration says "
                f'ak_algorithm = "{self.ak_algorithm}"'
            )
        params = area.parameters.eccDetail if algorithm == "ecc-p256" else area.parameters.rsaDetail
        scheme = int(params.scheme.scheme)
        if scheme == int(p.TPM2_ALG.NULL):
            # A restricted signing key carries its scheme (TPMs refuse to create one without).
            raise AttestationUnavailable(f"tpm: the key at {where} has no signing scheme")
        # anySig: the TPMS_SCHEME_HASH every signing scheme's details start with (Part 2 §11.2.1).
        problem = _scheme_problem(scheme, int(params.scheme.details.anySig.hashAlg))
        if problem:
            raise AttestationUnavailable(f"tpm: the key at {where} {problem}")
        # TPM2_Quote inScheme TPM_ALG_NULL: the key's own scheme (Part 3 §18.4).
        self._scheme = p.TPMT_SIG_SCHEME(scheme=p.TPM2_ALG.NULL)
        return AkInfo(key, algorithm, self.ak_handle, created)

    # -- quoting ----------------------------------------------------------------------------------

    def quote(self, qualifying: bytes, deadline: float) -> bytes | None:
        """The CBOR evidence of one quote (module docstring, steps 1-4), or None, at once and
        without a TPM command, when the session is not open: the caller opens it (under
        ``open_timeout``) and asks again. Blocking; under the TPM lock."""
        if not self.is_open:
            return None
        ak = self.ak
        assert ak is not None
        p = _pytss()
        busy = races = 0
        self._action = "reading PCRs"
        try:
            while True:
                try:
                    evidence = self._attempt(ak, qualifying)
                except p.TSS2_Exception as exc:
                    if not _is_busy(exc) or busy >= TPM_BUSY_RETRIES or time.monotonic() > deadline:
                        raise
                    busy += 1
                    self.stats.busy_retries += 1
                    time.sleep(TPM_BUSY_BACKOFF * busy)
                    continue
                if evidence is not None:
                    return evidence
                races += 1
                self.stats.pcr_races += 1
                if races > PCR_RACE_RETRIES or time.monotonic() > deadline:
                    raise AttestationUnavailable(
                        f"tpm: the PCRs kept changing between TPM2_PCR_Read and TPM2_Quote "
                        f"({races} attempts) on {self.tcti!r}"
                    )
                logger.info("tpm: PCRs changed during a quote (attempt %d), quoting again", races)
        except AttestationUnavailable:
            raise  # a PCR race or a failed self-check (_check marks the session when it must)
        except Exception as exc:  # unexpected ones too: _session_lost marks those broken
            if _session_lost(exc):
                self.broken = True  # the next call closes and reopens it
            raise AttestationUnavailable(_describe(exc, self._action, self.tcti)) from None

    def _attempt(self, ak: AkInfo, qualifying: bytes) -> bytes | None:
        """Read, quote, self-check: the evidence, or None when the PCRs moved meanwhile."""
        p = _pytss()
        self._action = "reading PCRs"
        values = self._read_pcrs()
        if values is None:
            return None
        self._action = "quoting"
        attest, signature = self._esapi.quote(
            self._ak_tr, self._selection(self.pcrs), p.TPM2B_DATA(qualifying), self._scheme
        )
        raw_attest = bytes(attest.marshal())[2:]  # TPM2B_ATTEST: UINT16 size ‖ TPMS_ATTEST
        raw_signature = bytes(signature.marshal())
        self._action = "checking the quote"
        if not self._check(ak, qualifying, raw_attest, raw_signature, values):
            return None
        return encode_evidence(
            TpmEvidence(raw_attest, raw_signature, values, self.pcr_bank, ak.spki)
        )

    def _selection(self, pcrs: Sequence[int]) -> Any:
        """TPML_PCR_SELECTION of one bank (Part 2 §10.9.7, §10.6.2)."""
        p = _pytss()
        bits = bytearray(3)  # PCR_SELECT_MIN for 24 PCRs
        for n in pcrs:
            bits[n // 8] |= 1 << (n % 8)
        sel = p.TPMS_PCR_SELECTION(
            hash=HASH_IDS[self.pcr_bank], sizeofSelect=len(bits), pcrSelect=bytes(bits)
        )
        return p.TPML_PCR_SELECTION([sel])

    def _read_pcrs(self) -> dict[int, bytes] | None:
        """The configured PCRs' values, read in chunks; None when pcrUpdateCounter moved."""
        values: dict[int, bytes] = {}
        counter: int | None = None
        size = HASH_SIZES[self.pcr_bank]
        for _ in range(MAX_PCR_READS):
            todo = [n for n in self.pcrs if n not in values][:PCR_READ_CHUNK]
            if not todo:
                return values
            update, selection_out, digests = self._esapi.pcr_read(self._selection(todo))
            if counter is not None and int(update) != counter:
                return None  # extended between two chunks
            counter = int(update)
            got: list[int] = []
            for i in range(int(selection_out.count)):
                sel = selection_out.pcrSelections[i]
                if int(sel.hash) != HASH_IDS[self.pcr_bank]:
                    raise ValueError("TPM2_PCR_Read returned another bank than asked")
                got.extend(sorted(_selected(bytes(sel.pcrSelect)[: int(sel.sizeofSelect)])))
            digest_list = [bytes(d) for d in digests]
            if len(got) != len(digest_list) or not set(got) <= set(todo):
                raise ValueError("TPM2_PCR_Read returned values for PCRs that were not asked")
            if not got:
                raise ValueError(f"TPM2_PCR_Read returned none of PCR(s) {_pcr_list(todo)}")
            for n, value in zip(got, digest_list, strict=True):
                if len(value) != size:
                    raise ValueError(f"PCR {n} is {len(value)} bytes, not a {self.pcr_bank} value")
                values[n] = value
        raise ValueError("TPM2_PCR_Read kept returning partial results")

    def _check(
        self,
        ak: AkInfo,
        qualifying: bytes,
        raw_attest: bytes,
        raw_signature: bytes,
        values: dict[int, bytes],
    ) -> bool:
        """Step 3 of the module docstring. False: the PCRs moved (retry); raises otherwise."""
        try:
            quote = parse_quote(raw_attest)
            sig = parse_signature(raw_signature)
        except DecodeError as exc:
            raise AttestationUnavailable(
                f"tpm: the TPM returned a malformed quote: {exc}"
            ) from None
        if quote.trailing or sig.trailing:
            raise AttestationUnavailable("tpm: the TPM returned bytes after its quote structures")
        if quote.extra_data != qualifying:
            raise AttestationUnavailable("tpm: the quote does not carry our qualifying data")
        selected = [(s.hash_name, s.pcrs) for s in quote.selections if s.pcrs]
        if selected != [(self.pcr_bank, self.pcrs)]:
            raise AttestationUnavailable(
                f"tpm: the quote selects {selected}, not {self.pcr_bank}:{_pcr_list(self.pcrs)}"
            )
        if not verify_quote_signature(ak.public_key, sig, quote.signed):
            # The key behind the AK's handle is not the one read at open: read it again.
            self.broken = True
            raise AttestationUnavailable(
                f"tpm: the quote's signature does not verify with the AK (sha256(SPKI) "
                f"{ak.fingerprint})"
            )
        return pcr_digest(HASH_ALGS[sig.hash_alg][0], quote, values) == quote.pcr_digest


def _selected(bitmap: bytes) -> set[int]:
    return {8 * i + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1}


def _pcr_list(pcrs: Sequence[int]) -> str:
    return ",".join(map(str, pcrs))


# --- the attester --------------------------------------------------------------------------------


class TpmAttester:
    """Quotes PCRs with a TPM attestation key (module docstring).

    Construction checks the arguments only (``ValueError``); ``open()`` connects and loads or
    creates the AK (blocking, at most ``open_timeout`` s; ``AttestationUnavailable``); ``attest``
    opens on demand. ``close()`` flushes a primary AK made at start-up and releases the TCTI
    (skipped, with a warning, while a timed-out TPM command still holds the TPM).
    """

    name = "tpm"
    simulated = False

    def __init__(
        self,
        tcti: str,
        *,
        ak_handle: int | None = None,
        create_ak: bool = False,
        hierarchy: Hierarchy = "endorsement",
        ak_algorithm: AkAlgorithm = "ecc-p256",
        pcrs: Sequence[int] = DEFAULT_PCRS,
        pcr_bank: str = DEFAULT_PCR_BANK,
        timeout: float = DEFAULT_TIMEOUT,
        open_timeout: float | None = None,
    ) -> None:
        if not isinstance(tcti, str) or not tcti or "\0" in tcti:
            raise ValueError("tcti is a TCTI string such as 'device:/dev/tpmrm0'")
        if ak_handle is not None:
            ak_handle = parse_handle(ak_handle)
        if create_ak and ak_handle is None:
            raise ValueError("create_ak makes the AK persistent at ak_handle: set ak_handle")
        if hierarchy not in HIERARCHIES:
            raise ValueError(f"hierarchy is one of {', '.join(HIERARCHIES)}")
        if ak_algorithm not in AK_ALGORITHMS:
            raise ValueError(f"ak_algorithm is one of {', '.join(AK_ALGORITHMS)}")
        if pcr_bank not in HASH_IDS:
            raise ValueError(f"pcr_bank is one of {', '.join(HASH_IDS)}")
        chosen = tuple(pcrs)
        if not chosen:
            raise ValueError("at least one PCR must be quoted")
        if any(isinstance(n, bool) or not isinstance(n, int) for n in chosen):
            raise ValueError("PCR indexes are integers")
        if len(set(chosen)) != len(chosen) or not all(0 <= n < PCR_COUNT for n in chosen):
            raise ValueError(f"PCR indexes are distinct, in 0..{PCR_COUNT - 1}")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout is in (0, {MAX_TIMEOUT:g}] seconds")
        if open_timeout is None:
            open_timeout = max(timeout, OPEN_TIMEOUT_FLOOR)
        if not 0 < open_timeout <= MAX_TIMEOUT:
            raise ValueError(f"open_timeout is in (0, {MAX_TIMEOUT:g}] seconds")
        self.tcti = tcti
        self.pcrs = tuple(sorted(chosen))
        self.pcr_bank = pcr_bank
        self.stats = TpmStats()
        self._timeout = float(timeout)
        self._open_timeout = float(open_timeout)
        # One TPM command sequence at a time (ESAPI is not thread-safe); a call whose caller gave
        # up still holds the TPM until it returns.
        self._tpm_lock = threading.Lock()
        self._session = _TpmSession(
            tcti,
            ak_handle=ak_handle,
            create_ak=create_ak,
            hierarchy=hierarchy,
            ak_algorithm=ak_algorithm,
            pcrs=self.pcrs,
            pcr_bank=pcr_bank,
            stats=self.stats,
            lock=self._tpm_lock,
        )
        self._calls = SerialThreadCalls("tpm", "atls-proxy-tpm", _LOCK_PHASE, _ABANDONED_PHASE)

    @property
    def ak(self) -> AkInfo | None:
        """The AK of the open session (None before ``open`` or after a failure)."""
        return self._session.ak

    def open(self) -> AkInfo:
        """Connect and load or create the AK (blocking, at most ``open_timeout`` seconds).
        Raises ``AttestationUnavailable``."""
        locked = threading.Event()

        def locked_open() -> AkInfo:
            with self._tpm_lock:
                locked.set()
                return self._session.open()

        # In a daemon thread: a TPM that accepts the connection and never answers would
        # otherwise block serve / check-config / tpm-ak forever; the abandoned thread keeps the
        # lock until the TCTI gives up, so nothing else uses the context meanwhile.
        try:
            return call_with_deadline(locked_open, self._open_timeout, "atls-proxy-tpm-open")
        except TimeoutError:
            # The session is left as it is: the abandoned thread's own outcome decides (a failed
            # open closes it, a late success leaves it open for the next call).
            step = (
                self._session._action
                if locked.is_set()
                else "waiting for a TPM command that is still running"
            )
            raise self._open_timed_out(self._open_timeout, step) from None

    def _open_timed_out(self, seconds: float, step: str) -> AttestationUnavailable:
        return AttestationUnavailable(
            f"tpm: no answer within {seconds:g} s while opening the TPM via {self.tcti!r} "
            f"(open_timeout; step: {step}); is the TPM or its resource manager hung?"
        )

    def close(self) -> None:
        """Flush a primary AK made here and release the TCTI (blocking, at most ``timeout``
        seconds; never raises)."""
        # Bounded: an abandoned (timed-out) call may hold the lock for as long as the TPM stays
        # silent, and closing the context under it is not allowed (ESAPI is not thread-safe).
        self._session.close_when_free(self._timeout, f"after {self._timeout:g} s")

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def attest(self, binding: Binding) -> Evidence:
        """A fresh quote over ``qualifying_data(binding)``; AttestationUnavailable on failure.

        The quote gets ``timeout`` seconds; when the session must be (re)opened first, that gets
        ``open_timeout`` seconds of its own (module docstring, Concurrency)."""
        qualifying = qualifying_data(binding)
        started = time.monotonic()
        data = await self._quote(qualifying)
        if data is None:
            await self._call(self._session.open, opening=True)
            data = await self._quote(qualifying)
            if data is None:  # another caller's quote lost the session in between
                self.stats.failures += 1
                raise AttestationUnavailable(
                    f"tpm: the session via {self.tcti!r} was lost again right after opening it"
                )
        self.stats.quotes += 1
        self.stats.last_quote_seconds = time.monotonic() - started
        return Evidence(MEDIA_TYPE, data)

    async def _quote(self, qualifying: bytes) -> bytes | None:
        deadline = time.monotonic() + self._timeout  # for the busy and PCR-race retries
        return await self._call(lambda: self._session.quote(qualifying, deadline), opening=False)

    async def _call(self, fn: Callable[[], _T], *, opening: bool) -> _T:
        """``fn()`` under the TPM lock in a daemon thread (``SerialThreadCalls``), waited for
        ``open_timeout`` (``opening``) or ``timeout`` seconds. A time-out leaves the session
        alone: the thread runs on and its own outcome decides (module docstring)."""
        timeout = self._open_timeout if opening else self._timeout
        running = threading.Event()
        phase = CallPhase()

        def locked() -> _T:
            with self._tpm_lock:
                running.set()
                return fn()

        try:
            async with asyncio.timeout(timeout) as scope:
                return await self._calls.call(locked, phase=phase)
        except TimeoutError:
            if not scope.expired():
                raise
            self.stats.timeouts += 1
            self.stats.failures += 1
            if running.is_set():
                step = self._session._action  # this call holds the TPM lock: its own step
            elif phase.value in (_LOCK_PHASE, _ABANDONED_PHASE):
                step = phase.value
            else:  # started, but the TPM lock is held by open() or close()
                step = "waiting for a TPM command that is still running"
            if opening:
                raise self._open_timed_out(timeout, step) from None
            raise AttestationUnavailable(
                f"tpm: no quote within {timeout:g} s ({step}) via {self.tcti!r}"
            ) from None
        except AttestationUnavailable:
            self.stats.failures += 1
            raise


def read_ak(
    tcti: str,
    *,
    ak_handle: int | None = None,
    create_ak: bool = False,
    hierarchy: Hierarchy = "endorsement",
    ak_algorithm: AkAlgorithm = "ecc-p256",
    open_timeout: float | None = None,
) -> AkInfo:
    """Load or create the AK exactly as a ``TpmAttester`` with these settings would, and release
    the TPM again (blocking; for ``atls-proxy tpm-ak``). Raises ``AttestationUnavailable``."""
    attester = TpmAttester(
        tcti,
        ak_handle=ak_handle,
        create_ak=create_ak,
        hierarchy=hierarchy,
        ak_algorithm=ak_algorithm,
        open_timeout=open_timeout,
    )
    try:
        return attester.open()
    finally:
        attester.close()
