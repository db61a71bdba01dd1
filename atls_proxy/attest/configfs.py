"""Hardware attester over the Linux configfs-tsm report interface (TDX, SEV-SNP, Arm CCA guests).

Theory of operation
-------------------
The kernel exposes one vendor-neutral ABI for confidential-VM attestation reports,
``/sys/kernel/config/tsm/report`` (Documentation/ABI/testing/configfs-tsm, renamed
configfs-tsm-report in later kernels; implementation drivers/virt/coco/tsm.c, later
tsm-report.c). A provider driver (``tdx_guest``, ``sev_guest``, ``arm_cca_guest``) registers with
it; userspace never talks to the vendor ioctl. The ABI as this module uses it:

``mkdir report/$name``
    creates a report entry; ENXIO when no provider is registered. An entry holds:
``inblob`` (WO, binary, at most 64 bytes)
    the user data: TDX REPORTDATA, SNP REPORT_DATA, the CCA realm challenge. TDX and SNP require
    exactly 64 bytes. Writes to configfs binary attributes are buffered and committed on
    ``close()``; older kernels ignore a failed commit, newer ones report it from ``close()``.
``outblob`` (RO, binary)
    reading it makes the provider generate the report (quote) from ``inblob`` and the options,
    and caches it until the next write; EINVAL when ``inblob`` was never written.
``auxblob`` (RO, binary, optional)
    provider supplements: for ``sev_guest`` the GHCB certificate table (GHCB spec §4.1.8.1
    MSG_REPORT_REQ: VCEK/VLEK, ASK, ARK), possibly empty.
``provider`` (RO, text)
    names the format of ``outblob``: the kernel module name of the provider driver.
``generation`` (RO, text)
    the number of successful writes to the entry's attributes. The ABI doc's conflict detection:
    compare it before writing and after reading ``outblob``; a difference from the number of our
    own writes means another writer touched the entry between our write and our read.
``privlevel`` (WO, text) / ``privlevel_floor`` (RO, text), optional
    the SEV-SNP VMPL to request, ``privlevel_floor <= privlevel <= 3`` (TSM_PRIVLEVEL_MAX).
    Only ``sev_guest`` acts on it (``PRIVLEVEL_PROVIDERS``); see "Attribute visibility".
``service_provider``, ``service_guid``, ``service_manifest_version``, ``manifestblob``, optional
    SVSM service attestation (kernel 6.10+). Detected and reported, never written: this
    attester quotes the SNP firmware report, not the SVSM's.
``rmdir report/$name``
    frees the entry.

Attribute visibility. The presence of an optional attribute does not mean that the provider
implements it. Since kernel 6.10 every entry has every attribute, and the report core hides one
only when the provider's ``report_attr_visible``/``report_bin_attr_visible`` callback says so:
``tsm_report_is_visible()`` in drivers/virt/coco/tsm.c (later tsm-report.c) returns true when
``provider.ops->report_attr_visible`` is NULL ("x86/sev: Take advantage of configfs visibility
support in TSM", v6.10). ``tdx_guest`` and ``sev_guest`` register callbacks; ``arm_cca_guest``
(``arm_cca_tsm_ops`` in drivers/virt/coco/arm-cca-guest, 6.13+) sets only ``name`` and
``report_new``, so a CCA entry shows ``privlevel``, ``privlevel_floor``, ``auxblob`` and the
SVSM attributes too, and ``arm_cca_report_new`` ignores them. So this attester decides by the
provider, not by the files: a configured ``privlevel`` is refused unless the provider is
``sev_guest``, and only a ``sev_guest`` entry's ``privlevel_floor`` and SVSM attributes mean
anything.

One quote (``_attempt``), on a fresh uniquely-named entry (so the ABI's "instance per requesting
context" already rules out conflicts; the generation checks catch a stray writer anyway, from
the mkdir on):

    mkdir → read provider (unknown → fail, nothing quoted) → read generation g0: must be 0, as
      on every new entry (higher: another writer already set privlevel or inblob; retry)
    → [write privlevel] → write inblob (64 bytes) → read generation: must be g0 + writes
      (lower: the kernel dropped our write; higher: another writer)
    → read outblob → [read auxblob] → read generation: must still be g0 + writes (else retry)
    → check the report carries our report data → rmdir (always, also after errors)

A generation mismatch, EBUSY, EAGAIN and EINTR are transient: the attempt is retried on a new
entry, at most ``retries`` more times with a short back-off, all inside ``timeout``. Everything
else (missing tree, permission, EIO, EINVAL, ENOTTY, an unknown provider, an empty, oversized or
foreign report) fails at once with ``AttestationUnavailable`` naming the operation, the path, the
errno and a hint. No raw ``OSError`` escapes.

Serialisation and time-outs. Parallel quote requests have crashed TDs (DESIGN.md §4), so one
attester runs at most one quote at a time: an ``asyncio.Lock`` guards the blocking part, and a
quote whose caller gave up (time-out, cancellation) still counts as running until its kernel
call returns — the next caller waits for it (inside its own time-out) instead of starting a
second quote beside it. The blocking file I/O runs in a daemon thread, one per quote (~40 ms
each, so the thread start is noise): a read stuck in the kernel can neither block the event loop
nor hold up interpreter exit, which a ``ThreadPoolExecutor`` (``asyncio.to_thread``) would.
The guard is per process; several worker processes each quote on their own entries.

Evidence. The report bytes travel raw in a CMW record whose media type names the provider's
format (``PROVIDER_MEDIA_TYPES``). When ``sev_guest`` returns a non-empty certificate table, the
evidence is the CBOR map ``{1: report, 2: certificate table}`` (deterministic encoding) under
``SNP_CERTS_MEDIA_TYPE``. docs/ATTESTERS.md describes both for verifier authors.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cbor2

from atls_proxy.attest.base import Evidence
from atls_proxy.attest.blocking import CallPhase, SerialThreadCalls
from atls_proxy.errors import AttestationUnavailable
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import MAX_CMW_SIZE

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ROOT",
    "PRIVLEVEL_PROVIDERS",
    "PROVIDER_AUX_MEDIA_TYPES",
    "PROVIDER_MEDIA_TYPES",
    "SNP_CERTS_MEDIA_TYPE",
    "ConfigfsTsmAttester",
    "ConfigfsTsmStats",
    "OsTsmOps",
    "TsmOps",
    "TsmReport",
    "build_evidence",
    "embedded_report_data",
    "privlevel_problem",
    "probe",
]

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
DEFAULT_ENTRY_PREFIX = "atls-proxy"

# Media type of each provider's raw outblob (the CMW record type). Keyed by the kernel's
# ``provider`` string, i.e. the provider driver's module name. The verifiers look formats up by
# these strings: rename them here and only here.
PROVIDER_MEDIA_TYPES: dict[str, str] = {
    "tdx_guest": "application/vnd.atls-proxy.tdx-quote",
    "sev_guest": "application/vnd.atls-proxy.snp-report",
    "arm_cca_guest": "application/vnd.atls-proxy.cca-token",
}
# SEV-SNP report plus the GHCB certificate table from auxblob: CBOR {1: report, 2: cert table}.
SNP_CERTS_MEDIA_TYPE = "application/vnd.atls-proxy.snp-report+certs"
# Providers whose non-empty auxblob travels with the report, and the media type of the pair.
# The auxblob of any other provider is not part of the evidence (and none is known to have one).
PROVIDER_AUX_MEDIA_TYPES: dict[str, str] = {"sev_guest": SNP_CERTS_MEDIA_TYPE}
# Keys of the report+auxblob CBOR map.
AUX_MAP_REPORT = 1
AUX_MAP_AUXBLOB = 2

# TSM_INBLOB_MAX and the user-data size of every provider here (TDX REPORTDATA, SNP REPORT_DATA,
# CCA challenge); Binding.report_data() is exactly this long.
REPORT_DATA_SIZE = 64
# TSM_PRIVLEVEL_MAX (include/linux/tsm.h): SEV-SNP VMPL 0..3.
PRIVLEVEL_MAX = 3
# Providers that act on ``privlevel`` (and whose ``privlevel_floor`` and SVSM attributes mean
# something): SEV-SNP only. Not "providers with a privlevel file": arm_cca_guest has one on
# every kernel that has the driver and ignores it (module docstring, "Attribute visibility").
PRIVLEVEL_PROVIDERS: frozenset[str] = frozenset({"sev_guest"})

# Read caps. outblob: a TDX quote with its PEM PCK chain is ~5 KB (some stacks pad to 8000
# bytes), an SNP report 1184 bytes, a CCA token 1-3 KB. 64 KiB matches the TDX verifier's
# MAX_QUOTE_SIZE, and evidence must fit a CMW of at most 65529 bytes anyway (expat/cmw.py).
# Kernel 7.0 raised TSM_REPORT_OUTBLOB_MAX to 16 MiB for DICE/PQC evidence; such evidence
# cannot travel in cmw_attestation and is refused with a clear error.
MAX_OUTBLOB_SIZE = 64 * 1024
# auxblob: the sev-guest driver hands the firmware a 16 KiB certificate buffer
# (SEV_FW_BLOB_MAX_SIZE); VCEK + ASK + ARK in DER are ~5 KB. Twice the driver's buffer.
MAX_AUXBLOB_SIZE = 32 * 1024
# Text attributes (provider, generation, privlevel_floor) are sysfs_emit() output: one page.
MAX_TEXT_ATTR_SIZE = 4096
# Provider names are kernel module names (KBUILD_MODNAME).
PROVIDER_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Entry names: prefix-pid-16 hex digits. The random part makes names unique across calls,
# processes and restarts; the pid says which process owns a leftover entry.
ENTRY_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENTRY_RANDOM_BYTES = 8

# Retry policy for transient failures (generation race, EBUSY, EAGAIN, EINTR).
MAX_RETRIES = 10
# First back-off 20 ms (half a TDX quote), doubling, at most 200 ms; always inside ``timeout``.
RETRY_BACKOFF = 0.02
MAX_RETRY_BACKOFF = 0.2
# Whole-quote time-out bounds. A TDX quote takes ~40 ms, the stock driver can add a second, and
# the tdx_guest driver itself gives up after 30 s: 10 s default, 5 min ceiling.
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0

# Errnos after which a new attempt on a new entry may succeed.
TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.EINTR})

_ERRNO_HINTS: dict[int, str] = {
    errno.ENOENT: "the entry or attribute does not exist",
    errno.EACCES: (
        "permission denied: the proxy needs write access to the configfs-tsm report directory "
        "(run as root, or mount configfs writable into the container)"
    ),
    errno.EPERM: (
        "operation not permitted: the proxy needs write access to the configfs-tsm report "
        "directory (run as root, or mount configfs writable into the container)"
    ),
    errno.ENXIO: (
        "no TSM provider is registered (load tdx_guest, sev_guest or arm_cca_guest), or the "
        "firmware refused the request"
    ),
    errno.EBUSY: "the TSM provider is busy",
    errno.EAGAIN: "the TSM provider asked to try again",
    errno.EINTR: "the request was interrupted",
    errno.EIO: "the TSM provider failed to produce a report (is the host's quoting service up?)",
    errno.EINVAL: "the provider rejected the request (report data length or privilege level)",
    errno.ETIMEDOUT: "the provider timed out waiting for the host",
    errno.ENOTTY: (
        "the provider refuses reports (SEV-SNP: the VMPCK was wiped after a failed guest "
        "request; the guest must be rebooted)"
    ),
    errno.EFBIG: "the data is larger than the attribute accepts",
    errno.ENOMEM: "the kernel is out of memory",
}


# ----------------------------------------------------------------------------------------------
# File access: an injectable interface (tests run the attester on a fake kernel)
# ----------------------------------------------------------------------------------------------


class TsmOps(Protocol):
    """The file operations the attester performs; each raises ``OSError`` like the syscalls."""

    def isdir(self, path: Path) -> bool: ...

    def exists(self, path: Path) -> bool: ...

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path, limit: int) -> bytes:
        """Read from offset 0 until EOF or more than ``limit`` bytes (returns ≤ limit + 1)."""
        ...

    def write(self, path: Path, data: bytes) -> None:
        """Open, write all of ``data``, close; an error from ``close()`` is raised too."""
        ...


class OsTsmOps:
    """The real thing: plain syscalls on configfs."""

    # One read() per chunk; configfs serves a binary attribute from a buffer it fills on the
    # first read, so the chunk size only sets the number of syscalls.
    READ_CHUNK = 16 * 1024

    def isdir(self, path: Path) -> bool:
        return path.is_dir()

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, min(self.READ_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            raise
        # configfs commits a binary attribute on close; newer kernels report a failure here.
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Sans-IO core: check a report and turn it into evidence
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TsmReport:
    """What one consistent read of a report entry produced."""

    provider: str
    outblob: bytes
    auxblob: bytes | None  # None: the provider has no auxblob attribute
    privlevel: int | None  # the privlevel written, None when none was
    attempts: int
    # Optional attributes present (privlevel, auxblob, manifestblob, ...); present is not
    # implemented: arm_cca_guest shows them all (module docstring, "Attribute visibility").
    features: frozenset[str]


# TDX quote (Intel TDX DCAP Quoting Library API, App. A; offsets checked against the real quotes
# in ../shared/vectors, cf. verify/tdx/quote.py): header(48) ‖ [v5: type u16 ‖ size u32] ‖ body;
# REPORTDATA is the last 64 bytes of the 584-byte TD 1.0 body and at the same offset in TD 1.5.
_TDX_HEADER_SIZE = 48
_TDX_V5_DESCRIPTOR_SIZE = 6
_TDX_BODY_REPORT_DATA_OFFSET = 520
_TDX_TEE_TYPE = 0x81
_TDX_V5_BODY_TYPES = frozenset({2, 3})
# SEV-SNP ATTESTATION_REPORT (SEV-SNP ABI spec, Table "ATTESTATION_REPORT Structure"): 1184
# bytes, REPORT_DATA at 0x50, the signature over [0, 0x2A0) at 0x2A0.
_SNP_REPORT_SIZE = 0x4A0
_SNP_REPORT_DATA_OFFSET = 0x50
_SNP_MIN_VERSION = 2
# Arm CCA attestation token (RMM spec A7.2; draft-ffm-rats-cca-token): tag 399 around a map
# {44234: platform token, 44241: realm token}; the realm token is a COSE_Sign1 whose payload
# carries the challenge (the inblob) under claim key 10.
_CCA_COLLECTION_TAG = 399
_CCA_REALM_TOKEN_KEY = 44241
_CCA_CHALLENGE_KEY = 10
_COSE_SIGN1_TAG = 18
# Nesting of a CCA token: collection map → realm COSE_Sign1 array → claims map → small values.
_CCA_MAX_CBOR_DEPTH = 16


def _tdx_report_data(quote: bytes) -> bytes:
    if len(quote) < _TDX_HEADER_SIZE:
        raise ValueError(f"a TDX quote is at least {_TDX_HEADER_SIZE} bytes, got {len(quote)}")
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if tee_type != _TDX_TEE_TYPE:
        raise ValueError(f"TEE type {tee_type:#x} is not TDX ({_TDX_TEE_TYPE:#x})")
    if version == 4:
        body = _TDX_HEADER_SIZE
    elif version == 5:
        if len(quote) < _TDX_HEADER_SIZE + _TDX_V5_DESCRIPTOR_SIZE:
            raise ValueError("TDX v5 quote truncated in its body descriptor")
        (body_type,) = struct.unpack_from("<H", quote, _TDX_HEADER_SIZE)
        if body_type not in _TDX_V5_BODY_TYPES:
            raise ValueError(f"TDX v5 body type {body_type} is not a TD report")
        body = _TDX_HEADER_SIZE + _TDX_V5_DESCRIPTOR_SIZE
    else:
        raise ValueError(f"TDX quote version {version} is not 4 or 5")
    start = body + _TDX_BODY_REPORT_DATA_OFFSET
    if len(quote) < start + REPORT_DATA_SIZE:
        raise ValueError(f"TDX quote of {len(quote)} bytes ends before its REPORTDATA")
    return quote[start : start + REPORT_DATA_SIZE]


def _snp_report_data(report: bytes) -> bytes:
    if len(report) < _SNP_REPORT_SIZE:
        raise ValueError(f"an SEV-SNP report is {_SNP_REPORT_SIZE} bytes, got {len(report)}")
    (version,) = struct.unpack_from("<I", report, 0)
    if version < _SNP_MIN_VERSION:
        raise ValueError(f"SEV-SNP report version {version} is older than {_SNP_MIN_VERSION}")
    return report[_SNP_REPORT_DATA_OFFSET : _SNP_REPORT_DATA_OFFSET + REPORT_DATA_SIZE]


def _cbor(data: bytes) -> Any:
    try:
        return cbor2.CBORDecoder(io.BytesIO(data), max_depth=_CCA_MAX_CBOR_DEPTH).decode()
    except Exception as exc:  # cbor2 raises several types on garbage; none may escape
        raise ValueError(f"not CBOR: {exc}") from None


def _cca_report_data(token: bytes) -> bytes:
    outer = _cbor(token)
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != _CCA_COLLECTION_TAG:
        raise ValueError(f"a CCA token is a CBOR tag {_CCA_COLLECTION_TAG} collection")
    if not isinstance(outer.value, dict) or not isinstance(
        outer.value.get(_CCA_REALM_TOKEN_KEY), bytes
    ):
        raise ValueError(f"CCA token has no realm token (key {_CCA_REALM_TOKEN_KEY})")
    realm = _cbor(outer.value[_CCA_REALM_TOKEN_KEY])
    if isinstance(realm, cbor2.CBORTag) and realm.tag == _COSE_SIGN1_TAG:
        realm = realm.value
    if not isinstance(realm, list) or len(realm) != 4 or not isinstance(realm[2], bytes):
        raise ValueError("CCA realm token is not a COSE_Sign1 with a payload")
    claims = _cbor(realm[2])
    challenge = claims.get(_CCA_CHALLENGE_KEY) if isinstance(claims, dict) else None
    if not isinstance(challenge, bytes) or len(challenge) != REPORT_DATA_SIZE:
        raise ValueError(f"CCA realm token has no {REPORT_DATA_SIZE}-byte challenge")
    return challenge


_REPORT_DATA_LOCATORS: dict[str, Callable[[bytes], bytes]] = {
    "tdx_guest": _tdx_report_data,
    "sev_guest": _snp_report_data,
    "arm_cca_guest": _cca_report_data,
}


def embedded_report_data(provider: str, outblob: bytes) -> bytes | None:
    """The 64-byte user data a report carries, or None when the provider's format is not known.

    Raises ``ValueError`` when the report is too malformed to locate it. This is a structural
    self-check of our own evidence, not an appraisal: signatures are the verifier's job.
    """
    locate = _REPORT_DATA_LOCATORS.get(provider)
    return None if locate is None else locate(outblob)


def build_evidence(report: TsmReport, report_data: bytes) -> Evidence:
    """Turn a consistent report read into evidence (module docstring); raise on a bad report."""
    media_type = PROVIDER_MEDIA_TYPES.get(report.provider)
    if media_type is None:
        raise AttestationUnavailable(_unknown_provider(report.provider))
    outblob = report.outblob
    if not outblob:
        raise AttestationUnavailable(f"configfs-tsm: {report.provider} returned an empty report")
    if len(outblob) > MAX_OUTBLOB_SIZE:
        raise AttestationUnavailable(
            f"configfs-tsm: {report.provider} returned a report larger than {MAX_OUTBLOB_SIZE} bytes"
        )
    try:
        carried = embedded_report_data(report.provider, outblob)
    except ValueError as exc:
        raise AttestationUnavailable(
            f"configfs-tsm: {report.provider} returned a malformed report ({len(outblob)} "
            f"bytes): {exc}"
        ) from None
    if carried is not None and carried != report_data:
        raise AttestationUnavailable(
            f"configfs-tsm: the {report.provider} report does not carry the requested report "
            "data (a stale or foreign report): refusing it"
        )
    data = outblob
    aux_type = PROVIDER_AUX_MEDIA_TYPES.get(report.provider)
    if report.auxblob and aux_type is not None:
        if len(report.auxblob) > MAX_AUXBLOB_SIZE:
            raise AttestationUnavailable(
                f"configfs-tsm: {report.provider} auxblob is larger than {MAX_AUXBLOB_SIZE} bytes"
            )
        media_type = aux_type
        # RFC 8949 §4.2.1 deterministic encoding: equal inputs give equal evidence bytes.
        data = cbor2.dumps(
            {AUX_MAP_REPORT: outblob, AUX_MAP_AUXBLOB: report.auxblob}, canonical=True
        )
    elif report.auxblob:
        logger.debug(
            "configfs-tsm: ignoring %d auxblob bytes from %s", len(report.auxblob), report.provider
        )
    if len(data) > MAX_CMW_SIZE:
        raise AttestationUnavailable(
            f"configfs-tsm: {report.provider} evidence is {len(data)} bytes; cmw_attestation "
            f"carries at most {MAX_CMW_SIZE}"
        )
    return Evidence(media_type=media_type, data=data)


def privlevel_problem(wanted: int | None, provider: str, features: Set[str]) -> str | None:
    """Why a configured ``privlevel`` cannot be requested from ``provider`` (an entry showing the
    optional attributes ``features``), or None. Decided by the provider, not by the privlevel
    file: arm_cca_guest has the file (no report_attr_visible callback) and ignores what is
    written to it (module docstring, "Attribute visibility")."""
    if wanted is None:
        return None
    if provider not in PRIVLEVEL_PROVIDERS:
        return (
            f"provider {provider!r} has no privilege levels (privlevel is for SEV-SNP guests, "
            "provider 'sev_guest', only)"
        )
    if "privlevel" not in features:
        return f"provider {provider!r} has no privlevel attribute"
    return None


def _unknown_provider(provider: str) -> str:
    known = ", ".join(sorted(PROVIDER_MEDIA_TYPES))
    return (
        f"configfs-tsm: unknown TSM provider {provider[:64]!r}: no evidence format for it "
        f"(known: {known})"
    )


def describe_oserror(exc: OSError, action: str, path: Path) -> str:
    """One line naming the operation, the path, the errno and what it usually means."""
    code = exc.errno if exc.errno is not None else 0
    name = errno.errorcode.get(code, str(code))
    hint = _ERRNO_HINTS.get(code)
    text = f"configfs-tsm: {action} {path}: {name} ({exc.strerror or exc})"
    return f"{text}: {hint}" if hint else text


# ----------------------------------------------------------------------------------------------
# Blocking procedure (runs in a worker thread)
# ----------------------------------------------------------------------------------------------


class _Transient(Exception):
    """This attempt failed in a way a new attempt on a new entry may not."""


def _missing_tree(root: Path) -> str:
    return (
        f"configfs-tsm: report directory {root} not found: not a confidential VM, configfs not "
        "mounted (mount -t configfs none /sys/kernel/config), or no TSM report support in the "
        "kernel (CONFIG_TSM_REPORTS, kernel 6.7+)"
    )


def _read_text(ops: TsmOps, path: Path, what: str) -> str:
    raw = ops.read(path, MAX_TEXT_ATTR_SIZE)
    if len(raw) > MAX_TEXT_ATTR_SIZE:
        raise AttestationUnavailable(f"configfs-tsm: {path} is longer than a page")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AttestationUnavailable(f"configfs-tsm: {what} at {path} is not ASCII text") from None


def _read_int(ops: TsmOps, path: Path, what: str) -> int:
    text = _read_text(ops, path, what)
    if not text.isdigit() or len(text) > 20:  # an unsigned long
        raise AttestationUnavailable(f"configfs-tsm: {what} at {path} is not a number: {text!r}")
    return int(text)


def _read_provider(ops: TsmOps, path: Path) -> str:
    provider = _read_text(ops, path, "provider")
    if not PROVIDER_NAME_RE.fullmatch(provider):
        raise AttestationUnavailable(f"configfs-tsm: provider name {provider[:64]!r} is malformed")
    return provider


def _entry_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(ENTRY_RANDOM_BYTES)}"


def _remove_entry(ops: TsmOps, entry: Path, stats: ConfigfsTsmStats | None) -> None:
    try:
        ops.rmdir(entry)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if stats is not None:
            stats.cleanup_failures += 1
        logger.warning("%s (the entry is left behind)", describe_oserror(exc, "removing", entry))


def probe(
    root: Path = DEFAULT_ROOT,
    *,
    ops: TsmOps | None = None,
    entry_prefix: str = DEFAULT_ENTRY_PREFIX,
) -> str | None:
    """Return the TSM provider name (``tdx_guest``, ...) or None when configfs-tsm is unusable.

    Blocking (a mkdir, a read and an rmdir; no quote is made): call it through
    ``asyncio.to_thread`` from async code. The reason for None is logged at INFO.
    """
    ops = ops if ops is not None else OsTsmOps()
    if not ENTRY_PREFIX_RE.fullmatch(entry_prefix):
        raise ValueError(f"entry prefix {entry_prefix!r} must match {ENTRY_PREFIX_RE.pattern}")
    try:
        if not ops.isdir(root):
            logger.info("%s", _missing_tree(root))
            return None
    except OSError as exc:
        logger.info("%s", describe_oserror(exc, "inspecting", root))
        return None
    entry = root / f"{_entry_name(entry_prefix)}-probe"
    try:
        ops.mkdir(entry)
    except OSError as exc:
        logger.info("%s", describe_oserror(exc, "creating report entry", entry))
        return None
    try:
        return _read_provider(ops, entry / "provider")
    except OSError as exc:
        logger.info("%s", describe_oserror(exc, "reading", entry / "provider"))
        return None
    except AttestationUnavailable as exc:
        logger.info("%s", exc)
        return None
    finally:
        _remove_entry(ops, entry, None)


@dataclass(slots=True)
class ConfigfsTsmStats:
    """Counters for the metrics layer (names are not public API until the metrics issue)."""

    quotes: int = 0
    failures: int = 0
    timeouts: int = 0
    generation_races: int = 0
    transient_errors: int = 0
    cleanup_failures: int = 0
    last_quote_seconds: float = 0.0


# Optional attributes whose presence is recorded in TsmReport.features.
_OPTIONAL_ATTRIBUTES = (
    "auxblob",
    "privlevel",
    "privlevel_floor",
    "service_provider",
    "service_guid",
    "service_manifest_version",
    "manifestblob",
)


class ConfigfsTsmAttester:
    """Quotes through ``/sys/kernel/config/tsm/report``: TDX quotes, SNP reports, CCA tokens.

    ``privlevel`` is the SEV-SNP VMPL to request: a quote fails (before anything is quoted)
    unless the provider is ``sev_guest``. None asks ``sev_guest`` for its ``privlevel_floor``
    when that is above 0 (a guest under an SVSM) and for the provider default otherwise.
    ``timeout`` bounds a whole ``attest`` call, waiting for a previous quote included;
    ``retries`` is the number of additional attempts after a transient failure.
    """

    name = "configfs-tsm"
    simulated = False

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        privlevel: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        entry_prefix: str = DEFAULT_ENTRY_PREFIX,
        ops: TsmOps | None = None,
    ) -> None:
        if privlevel is not None and (
            isinstance(privlevel, bool) or not 0 <= privlevel <= PRIVLEVEL_MAX
        ):
            raise ValueError(f"privlevel is 0..{PRIVLEVEL_MAX} (SEV-SNP VMPL) or None")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout is in (0, {MAX_TIMEOUT:g}] seconds")
        if isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries is 0..{MAX_RETRIES}")
        if not ENTRY_PREFIX_RE.fullmatch(entry_prefix):
            raise ValueError(
                f"entry prefix {entry_prefix!r} must match {ENTRY_PREFIX_RE.pattern} "
                "(it becomes a directory name under the report directory)"
            )
        self.root = Path(root)
        self.stats = ConfigfsTsmStats()
        self.last_report: TsmReport | None = None
        self._privlevel = privlevel
        self._timeout = float(timeout)
        self._retries = retries
        self._prefix = entry_prefix
        self._ops: TsmOps = ops if ops is not None else OsTsmOps()
        # One quote in the kernel at a time; a quote whose caller gave up still holds it.
        self._calls = SerialThreadCalls(
            "configfs-tsm",
            "atls-configfs-tsm",
            "waiting for the quote lock",
            "waiting for an abandoned quote that is still in the kernel",
        )
        self._announced: str | None = None

    # -- async API --------------------------------------------------------------------------

    async def attest(self, binding: Binding) -> Evidence:
        """A fresh report over ``binding.report_data()``; AttestationUnavailable on failure."""
        return await self.quote(binding.report_data())

    async def quote(self, report_data: bytes) -> Evidence:
        """A fresh report over 64 bytes of user data (``ValueError`` for any other length)."""
        if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is exactly {REPORT_DATA_SIZE} bytes")
        started = time.monotonic()
        deadline = started + self._timeout
        stop = threading.Event()
        phase = CallPhase()
        try:
            async with asyncio.timeout(self._timeout) as scope:
                report = await self._calls.call(
                    lambda: self._quote_blocking(report_data, deadline, stop),
                    on_abandon=stop.set,  # no new attempts; the current kernel call runs out
                    phase=phase,
                )
        except TimeoutError:
            if not scope.expired():
                raise
            self.stats.timeouts += 1
            self.stats.failures += 1
            raise AttestationUnavailable(
                f"configfs-tsm: no report within {self._timeout:g} s ({phase.value}) "
                f"under {self.root}"
            ) from None
        except AttestationUnavailable:
            self.stats.failures += 1
            raise
        try:
            evidence = build_evidence(report, report_data)
        except AttestationUnavailable:
            self.stats.failures += 1
            raise
        self.stats.quotes += 1
        self.stats.last_quote_seconds = time.monotonic() - started
        self.last_report = report
        self._announce(report)
        return evidence

    def _announce(self, report: TsmReport) -> None:
        if self._announced == report.provider:
            return
        self._announced = report.provider
        if report.provider not in PRIVLEVEL_PROVIDERS:
            # A provider without visibility callbacks shows every attribute (module docstring,
            # "Attribute visibility"): their presence says nothing, so say they are unused.
            unused = sorted(report.features)
            logger.info(
                "configfs-tsm attester: provider %s under %s (no privilege levels%s)",
                report.provider,
                self.root,
                f"; the entry also shows {', '.join(unused)}: not used" if unused else "",
            )
            return
        extras = sorted(report.features & {"service_provider", "manifestblob"})
        logger.info(
            "configfs-tsm attester: provider %s under %s (privlevel %s%s)",
            report.provider,
            self.root,
            "default" if report.privlevel is None else report.privlevel,
            f"; SVSM attributes present ({', '.join(extras)}), not used" if extras else "",
        )

    # -- blocking part (worker thread) --------------------------------------------------------

    def _quote_blocking(
        self, report_data: bytes, deadline: float, stop: threading.Event
    ) -> TsmReport:
        try:
            present = self._ops.isdir(self.root)
        except OSError as exc:
            raise AttestationUnavailable(describe_oserror(exc, "inspecting", self.root)) from None
        if not present:
            raise AttestationUnavailable(_missing_tree(self.root))
        last = "no attempt made"
        attempts = 0
        for attempt in range(1, self._retries + 2):
            if attempt > 1:
                backoff = min(RETRY_BACKOFF * 2 ** (attempt - 2), MAX_RETRY_BACKOFF)
                if time.monotonic() + backoff >= deadline or stop.wait(backoff):
                    break
            if stop.is_set():
                break
            attempts = attempt
            try:
                return self._attempt(report_data, attempt)
            except _Transient as exc:
                last = str(exc)
                logger.debug("configfs-tsm: attempt %d failed (transient): %s", attempt, last)
        raise AttestationUnavailable(
            f"configfs-tsm: no consistent report after {attempts} attempt(s); last: {last}"
        )

    def _fail(self, exc: OSError, action: str, path: Path) -> Exception:
        message = describe_oserror(exc, action, path)
        if exc.errno in TRANSIENT_ERRNOS:
            self.stats.transient_errors += 1
            return _Transient(message)
        return AttestationUnavailable(message)

    def _attempt(self, report_data: bytes, attempt: int) -> TsmReport:
        ops = self._ops
        entry = self.root / _entry_name(self._prefix)
        try:
            ops.mkdir(entry)
        except FileExistsError:
            raise _Transient(f"configfs-tsm: entry {entry} already exists") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise AttestationUnavailable(_missing_tree(self.root)) from None
            raise self._fail(exc, "creating report entry", entry) from None
        try:
            return self._fill_and_read(entry, report_data, attempt)
        finally:
            _remove_entry(ops, entry, self.stats)

    def _fill_and_read(self, entry: Path, report_data: bytes, attempt: int) -> TsmReport:
        ops = self._ops
        path = entry / "provider"
        action = "reading"
        try:
            provider = _read_provider(ops, path)
            if provider not in PROVIDER_MEDIA_TYPES:
                raise AttestationUnavailable(_unknown_provider(provider))
            features = frozenset(a for a in _OPTIONAL_ATTRIBUTES if ops.exists(entry / a))
            path = entry / "generation"
            start = _read_int(ops, path, "generation")
            # A new entry starts at generation 0. Anything else is another writer's privlevel or
            # inblob, which we would not overwrite (privlevel unset: its VMPL would be reported).
            self._check_generation(start, 0, "first write")
            writes = 0

            privlevel = self._choose_privlevel(entry, provider, features)
            if privlevel is not None:
                action, path = "writing", entry / "privlevel"
                ops.write(path, f"{privlevel}\n".encode())
                writes += 1
            action, path = "writing", entry / "inblob"
            ops.write(path, report_data)
            writes += 1

            action, path = "reading", entry / "generation"
            self._check_generation(_read_int(ops, path, "generation"), start + writes, "write")

            path = entry / "outblob"
            outblob = ops.read(path, MAX_OUTBLOB_SIZE)
            auxblob: bytes | None = None
            if "auxblob" in features:
                path = entry / "auxblob"
                auxblob = ops.read(path, MAX_AUXBLOB_SIZE)
            path = entry / "generation"
            self._check_generation(_read_int(ops, path, "generation"), start + writes, "read")
        except OSError as exc:
            raise self._fail(exc, action, path) from None
        if len(outblob) > MAX_OUTBLOB_SIZE:
            raise AttestationUnavailable(
                f"configfs-tsm: {provider} outblob is larger than {MAX_OUTBLOB_SIZE} bytes (see "
                "docs/ATTESTERS.md: larger evidence cannot travel in cmw_attestation)"
            )
        if auxblob is not None and len(auxblob) > MAX_AUXBLOB_SIZE:
            raise AttestationUnavailable(
                f"configfs-tsm: {provider} auxblob is larger than {MAX_AUXBLOB_SIZE} bytes"
            )
        return TsmReport(provider, outblob, auxblob, privlevel, attempt, features)

    def _check_generation(self, observed: int, expected: int, after: str) -> None:
        if observed == expected:
            return
        if observed < expected:
            raise AttestationUnavailable(
                f"configfs-tsm: the kernel did not record our write (generation {observed}, "
                f"expected {expected}): the provider rejected the request"
            )
        self.stats.generation_races += 1
        raise _Transient(
            f"configfs-tsm: a concurrent writer changed the entry before our {after} "
            f"(generation {observed}, expected {expected})"
        )

    def _choose_privlevel(self, entry: Path, provider: str, features: frozenset[str]) -> int | None:
        wanted = self._privlevel
        problem = privlevel_problem(wanted, provider, features)
        if problem:
            raise AttestationUnavailable(
                f"configfs-tsm: privlevel {wanted} is configured but {problem}"
            )
        if provider not in PRIVLEVEL_PROVIDERS:
            return None
        floor = 0
        if "privlevel_floor" in features:
            path = entry / "privlevel_floor"
            try:
                floor = _read_int(self._ops, path, "privlevel_floor")
            except OSError as exc:
                raise self._fail(exc, "reading", path) from None
        if wanted is None:
            # A guest above VMPL0 (under an SVSM) cannot get a VMPL0 report: ask for its floor.
            return floor if floor > 0 and "privlevel" in features else None
        if wanted < floor:
            raise AttestationUnavailable(
                f"configfs-tsm: privlevel {wanted} is below privlevel_floor {floor} of this "
                f"guest: configure privlevel {floor}..{PRIVLEVEL_MAX}"
            )
        return wanted
