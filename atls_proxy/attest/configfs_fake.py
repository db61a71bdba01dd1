"""A fake configfs-tsm report tree for tests and benchmarks. NOT AN ATTESTER: proves nothing.

Real configfs computes ``outblob`` when it is read, which a plain directory cannot do. ``FakeTsm``
keeps the state of each report entry in memory, the way drivers/virt/coco/tsm.c does, and
mirrors it into real files under ``root`` so the layout stays inspectable (``ls``, ``cat``);
``FakeTsm.ops`` is the ``TsmOps`` the attester uses instead of syscalls. Behaviour follows the
kernel ABI doc (Documentation/ABI/testing/configfs-tsm) and the report core:

* ``mkdir`` under ``root`` creates an entry with ``inblob outblob provider generation`` and, per
  provider, ``auxblob`` (sev_guest), ``privlevel privlevel_floor`` (sev_guest) and, with
  ``svsm=True``, the SVSM attributes; ENOENT without ``root``, EEXIST for a taken name.
  With ``all_attributes=True`` (the default for arm_cca_guest) an entry shows every attribute,
  as kernels >= 6.10 do for a provider that registers no ``report_attr_visible`` callback
  (``tsm_report_is_visible()`` in drivers/virt/coco/tsm.c returns true then; ``arm_cca_tsm_ops``
  has none, and the driver only exists since 6.13): an empty ``auxblob``, ``privlevel`` (accepted
  and ignored), ``privlevel_floor`` 0 and the SVSM attributes.
* Writing ``inblob`` (at most 64 bytes, else EFBIG) or ``privlevel`` (``floor..3``, else EINVAL)
  bumps ``generation``; reading a write-only attribute or writing a read-only one is EACCES.
* Reading ``outblob``/``auxblob`` generates the report when the entry changed since the last
  generation, else serves the cached one; EINVAL before ``inblob`` was written; tdx_guest and
  sev_guest need exactly 64 bytes, arm_cca_guest 32..64.
* ``rmdir`` removes the entry.

Reports are deterministic stand-ins shaped like the real formats where the attester looks (see
``fake_report``): a TDX v4 quote with REPORTDATA at its offset, a 1184-byte SNP report with
REPORT_DATA at 0x50 and VMPL at 0x30, a CCA tag-399 token whose realm claims hold the challenge.
Their "signatures" are HMACs under ``key``: no verifier accepts them.

Fault knobs (plain attributes; set them between calls, they are read under a lock):

``race_count``          the next N report generations are preceded by a racing writer that
                        rewrites the entry's inblob (generation + 1); a large N races forever
``outblob_errors``      errnos raised by the next report generations, one per generation
``mkdir_errno``         errno raised by every mkdir (EACCES, ENXIO, ...), None for none
``rmdir_errno``         errno raised by every rmdir, None for none
``outblob_override``    bytes served as the report whatever the inblob (garbage, empty, a real
                        vector)
``hang_seconds``        each generation blocks this long first (``release()`` ends it early)
``generate_delay``      each generation takes this long (to widen overlap windows)
``drop_inblob_writes``  inblob writes succeed but change nothing (an old kernel dropping a
                        failed binary-attribute commit)

Observations: ``quoted`` (the inblob of every generated report), ``max_concurrent`` (most
report generations running at once), ``max_live_entries``, ``live_entries()`` and ``layouts``
(the file names of each entry when its report was generated).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

# Attribute sets per provider (which files an entry shows).
_BASE_ATTRIBUTES = ("inblob", "outblob", "provider", "generation")
_SVSM_ATTRIBUTES = ("service_provider", "service_guid", "service_manifest_version", "manifestblob")
_WRITE_ONLY = frozenset(
    {"inblob", "privlevel", "service_provider", "service_guid", "service_manifest_version"}
)
_READ_ONLY = frozenset(
    {"outblob", "auxblob", "provider", "generation", "privlevel_floor", "manifestblob"}
)
TSM_INBLOB_MAX = 64
TSM_PRIVLEVEL_MAX = 3

# GHCB spec §4.1.8.1 certificate table GUIDs (VCEK, ASK, ARK).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

_DEFAULT_KEY = b"atls-proxy fake configfs-tsm key (not a secret)"


def _mac(key: bytes, data: bytes, hash_name: str = "sha256") -> bytes:
    return hmac.new(key, data, hash_name).digest()


def _fill(label: str, size: int) -> bytes:
    """Deterministic filler bytes standing for a measurement or an identifier."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def fake_tdx_quote(inblob: bytes, key: bytes = _DEFAULT_KEY) -> bytes:
    """A TDX v4 quote shape: header(48) ‖ TD 1.0 body(584, REPORTDATA last) ‖ len ‖ HMAC."""
    header = struct.pack("<HHI", 4, 2, 0x81) + bytes(4) + _fill("qe-vendor", 16) + bytes(20)
    body = _fill("td-body", 520) + inblob.ljust(64, b"\0")
    signature = _mac(key, header + body)
    return header + body + struct.pack("<I", len(signature)) + signature


def fake_snp_report(inblob: bytes, privlevel: int = 0, key: bytes = _DEFAULT_KEY) -> bytes:
    """A 1184-byte SEV-SNP report shape: version 2, VMPL at 0x30, REPORT_DATA at 0x50."""
    report = bytearray(0x4A0)
    struct.pack_into("<II", report, 0, 2, 1)  # version, guest SVN
    struct.pack_into("<II", report, 0x30, privlevel, 1)  # VMPL, signature algorithm
    report[0x50:0x90] = inblob.ljust(64, b"\0")
    report[0x90:0xC0] = _fill("launch-measurement", 48)
    report[0x2A0 : 0x2A0 + 48] = _mac(key, bytes(report[:0x2A0]), "sha384")
    return bytes(report)


def fake_cca_token(inblob: bytes, key: bytes = _DEFAULT_KEY) -> bytes:
    """A CCA token shape: tag 399 {44234: platform COSE_Sign1, 44241: realm COSE_Sign1}."""
    protected = cbor2.dumps({1: -35})  # ES384
    realm_claims = cbor2.dumps(
        {10: inblob.ljust(64, b"\0"), 44235: _fill("rim", 48), 44238: _fill("rpv", 64)}
    )
    realm = cbor2.dumps(
        cbor2.CBORTag(18, [protected, {}, realm_claims, _mac(key, realm_claims, "sha384")])
    )
    platform_claims = cbor2.dumps({10: hashlib.sha256(b"fake RAK").digest()})
    platform = cbor2.dumps(
        cbor2.CBORTag(18, [protected, {}, platform_claims, _mac(key, platform_claims, "sha384")])
    )
    return cbor2.dumps(cbor2.CBORTag(399, {44234: platform, 44241: realm}))


def fake_report(
    provider: str, inblob: bytes, privlevel: int = 0, key: bytes = _DEFAULT_KEY
) -> bytes:
    """What the fake provider returns for ``inblob`` (deterministic)."""
    if provider == "tdx_guest":
        return fake_tdx_quote(inblob, key)
    if provider == "sev_guest":
        return fake_snp_report(inblob, privlevel, key)
    if provider == "arm_cca_guest":
        return fake_cca_token(inblob, key)
    tagged = provider.encode() + b"\0" + inblob
    return tagged + _mac(key, tagged)


def fake_cert_table(key: bytes = _DEFAULT_KEY) -> bytes:
    """A GHCB certificate table: (GUID, offset u32, length u32) entries, a zero entry, the data."""
    certs = [(VCEK_GUID, _fill("vcek", 1360)), (ASK_GUID, _fill("ask", 1600))]
    certs.append((ARK_GUID, _fill("ark", 1500) + _mac(key, b"ark")))
    offset = 24 * (len(certs) + 1)
    table = b""
    data = b""
    for guid, der in certs:
        table += guid.bytes_le + struct.pack("<II", offset + len(data), len(der))
        data += der
    return table + bytes(24) + data


@dataclass(slots=True)
class _Entry:
    name: str
    attributes: tuple[str, ...]
    inblob: bytes | None = None
    privlevel: int = 0
    generation: int = 0
    generated_at: int | None = None
    outblob: bytes | None = None
    auxblob: bytes | None = None
    extra: dict[str, bytes] = field(default_factory=dict)


class FakeTsm:
    """In-memory configfs-tsm with real mirror files under ``root`` (module docstring)."""

    def __init__(
        self,
        root: Path,
        provider: str = "tdx_guest",
        *,
        key: bytes = _DEFAULT_KEY,
        create: bool = True,
        auxblob: bytes | None = None,
        privlevel_floor: int | None = None,
        svsm: bool = False,
        all_attributes: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.provider = provider
        self.key = key
        is_snp = provider == "sev_guest"
        # Kernels >= 6.10 show every attribute of a provider without visibility callbacks
        # (module docstring): arm_cca_guest on every kernel that has it.
        show_all = provider == "arm_cca_guest" if all_attributes is None else all_attributes
        self.all_attributes = show_all
        # sev_guest shows auxblob and the privlevel pair; tdx_guest shows neither; a provider
        # without callbacks shows both, an empty auxblob and privlevel_floor 0 (the ops' default).
        self.auxblob = (
            auxblob
            if auxblob is not None
            else (fake_cert_table(key) if is_snp else (b"" if show_all else None))
        )
        self.privlevel_floor = (
            privlevel_floor if privlevel_floor is not None else (0 if is_snp or show_all else None)
        )
        self.svsm = svsm or show_all
        # Fault knobs.
        self.race_count = 0
        self.outblob_errors: list[int] = []
        self.mkdir_errno: int | None = None
        self.rmdir_errno: int | None = None
        self.outblob_override: bytes | None = None
        self.hang_seconds = 0.0
        self.generate_delay = 0.0
        self.drop_inblob_writes = False
        # Observations.
        self.quoted: list[bytes] = []
        self.layouts: list[list[str]] = []
        self.max_concurrent = 0
        self.max_live_entries = 0
        self.mkdirs = 0
        self._concurrent = 0
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.ops = FakeTsmOps(self)

    # -- test helpers ---------------------------------------------------------------------------

    def release(self) -> None:
        """End every current and future hang."""
        self._release.set()

    def live_entries(self) -> list[str]:
        """Entry directories present on disk (kept in sync with the in-memory entries)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def attributes_for(self) -> tuple[str, ...]:
        names = list(_BASE_ATTRIBUTES)
        if self.auxblob is not None:
            names.append("auxblob")
        if self.privlevel_floor is not None:
            names += ["privlevel", "privlevel_floor"]
        if self.svsm:
            names += list(_SVSM_ATTRIBUTES)
        return tuple(names)

    # -- kernel behaviour -------------------------------------------------------------------------

    def _entry_for(self, path: Path) -> tuple[_Entry, str]:
        if path.parent.parent != self.root:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        entry = self._entries.get(path.parent.name)
        if entry is None or path.name not in entry.attributes:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return entry, path.name

    def _mirror(self, entry: _Entry, attribute: str, data: bytes) -> None:
        (self.root / entry.name / attribute).write_bytes(data)

    def mkdir(self, path: Path) -> None:
        with self._lock:
            self.mkdirs += 1
            if self.mkdir_errno is not None:
                raise OSError(self.mkdir_errno, os.strerror(self.mkdir_errno), str(path))
            if path.parent != self.root or not self.root.is_dir():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            if path.name in self._entries or path.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
            entry = _Entry(path.name, self.attributes_for())
            path.mkdir()
            for attribute in entry.attributes:
                (path / attribute).write_bytes(b"")
            self._entries[entry.name] = entry
            self._mirror(entry, "provider", f"{self.provider}\n".encode())
            self._mirror(entry, "generation", b"0\n")
            if self.privlevel_floor is not None:
                self._mirror(entry, "privlevel_floor", f"{self.privlevel_floor}\n".encode())
            self.max_live_entries = max(self.max_live_entries, len(self._entries))

    def rmdir(self, path: Path) -> None:
        with self._lock:
            if self.rmdir_errno is not None:
                raise OSError(self.rmdir_errno, os.strerror(self.rmdir_errno), str(path))
            entry = self._entries.pop(path.name, None) if path.parent == self.root else None
            if entry is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            for attribute in entry.attributes:
                (path / attribute).unlink()
            path.rmdir()

    def write(self, path: Path, data: bytes) -> None:
        with self._lock:
            entry, attribute = self._entry_for(path)
            if attribute not in _WRITE_ONLY:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            if attribute == "inblob":
                if len(data) > TSM_INBLOB_MAX:
                    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
                if self.drop_inblob_writes:
                    return
                entry.inblob = bytes(data)
            elif attribute == "privlevel":
                text = data.decode("ascii", "replace").strip()
                floor = self.privlevel_floor or 0
                if not text.isdigit() or not floor <= int(text) <= TSM_PRIVLEVEL_MAX:
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
                entry.privlevel = int(text)
            else:
                entry.extra[attribute] = bytes(data)
            entry.generation += 1
            self._mirror(entry, attribute, data)
            self._mirror(entry, "generation", f"{entry.generation}\n".encode())

    def read(self, path: Path, limit: int) -> bytes:
        with self._lock:
            entry, attribute = self._entry_for(path)
            if attribute in _WRITE_ONLY:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            if attribute == "provider":
                return f"{self.provider}\n".encode()[: limit + 1]
            if attribute == "generation":
                return f"{entry.generation}\n".encode()
            if attribute == "privlevel_floor":
                return f"{self.privlevel_floor}\n".encode()
            if attribute == "manifestblob":
                return b""
        # outblob / auxblob: generated outside the fake's lock. The kernel holds tsm_rwsem for
        # writing while it generates, so two entries never generate at once there; the fake lets
        # them overlap (and counts it: max_concurrent) so that tests see whether the attester
        # itself serialises its quotes, as it must on kernels and TEEs that do not.
        out, aux = self._generate(entry, path)
        blob = out if attribute == "outblob" else aux
        return blob[: limit + 1]

    def _generate(self, entry: _Entry, path: Path) -> tuple[bytes, bytes]:
        with self._lock:
            if entry.inblob is None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
            if entry.outblob is not None and entry.generated_at == entry.generation:
                return entry.outblob, entry.auxblob or b""
            if self.race_count > 0:
                self.race_count -= 1
                entry.inblob = bytes([0xEE]) * TSM_INBLOB_MAX
                entry.generation += 1
                self._mirror(entry, "inblob", entry.inblob)
                self._mirror(entry, "generation", f"{entry.generation}\n".encode())
            self._concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self._concurrent)
            failure = self.outblob_errors.pop(0) if self.outblob_errors else None
            inblob, generation, privlevel = entry.inblob, entry.generation, entry.privlevel
        try:
            if self.hang_seconds:
                self._release.wait(self.hang_seconds)
            if self.generate_delay:
                time.sleep(self.generate_delay)
            if failure is not None:
                raise OSError(failure, os.strerror(failure), str(path))
            self._check_inblob(inblob, path)
            out = self.outblob_override
            if out is None:
                out = fake_report(self.provider, inblob, privlevel, self.key)
            aux = self.auxblob or b""
        finally:
            with self._lock:
                self._concurrent -= 1
        with self._lock:
            self.quoted.append(inblob)
            entry.outblob, entry.auxblob, entry.generated_at = out, aux, generation
            if entry.name in self._entries:
                self.layouts.append(sorted(p.name for p in (self.root / entry.name).iterdir()))
                self._mirror(entry, "outblob", out)
                if "auxblob" in entry.attributes:
                    self._mirror(entry, "auxblob", aux)
        return out, aux

    def _check_inblob(self, inblob: bytes, path: Path) -> None:
        exact = self.provider in ("tdx_guest", "sev_guest")
        if (exact and len(inblob) != TSM_INBLOB_MAX) or (
            self.provider == "arm_cca_guest" and not 32 <= len(inblob) <= TSM_INBLOB_MAX
        ):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))


class FakeTsmOps:
    """``TsmOps`` backed by a ``FakeTsm``; ``isdir``/``exists`` look at the mirrored files."""

    def __init__(self, tsm: FakeTsm) -> None:
        self.tsm = tsm

    def isdir(self, path: Path) -> bool:
        return path.is_dir()

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def mkdir(self, path: Path) -> None:
        self.tsm.mkdir(path)

    def rmdir(self, path: Path) -> None:
        self.tsm.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        return self.tsm.read(path, limit)

    def write(self, path: Path, data: bytes) -> None:
        self.tsm.write(path, data)
