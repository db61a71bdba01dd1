"""SEV-SNP ATTESTATION_REPORT parsing, and the containers it travels in (sans-IO).

Layout: AMD "SEV Secure Nested Paging Firmware ABI Specification" (pub. 56860), Table
"ATTESTATION_REPORT Structure" (its number moves between revisions: 21-23). All integers are
little-endian. Versions 2 (ABI < 1.55), 3/4 (adds CPUID_FAM_ID/MOD_ID/STEP at 0x188) and 5 (adds
LAUNCH_MIT_VECTOR/CURRENT_MIT_VECTOR at 0x1F8/0x200) share the same size and signed span::

    0x000 VERSION u32          0x004 GUEST_SVN u32      0x008 POLICY u64
    0x010 FAMILY_ID [16]       0x020 IMAGE_ID [16]      0x030 VMPL u32
    0x034 SIGNATURE_ALGO u32   0x038 CURRENT_TCB u64    0x040 PLATFORM_INFO u64
    0x048 KEY_INFO u32 (bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY)
    0x050 REPORT_DATA [64]     0x090 MEASUREMENT [48]   0x0C0 HOST_DATA [32]
    0x0E0 ID_KEY_DIGEST [48]   0x110 AUTHOR_KEY_DIGEST [48]
    0x140 REPORT_ID [32]       0x160 REPORT_ID_MA [32]  0x180 REPORTED_TCB u64
    0x188 CPUID_FAM_ID u8, 0x189 CPUID_MOD_ID u8, 0x18A CPUID_STEP u8   (version >= 3)
    0x1A0 CHIP_ID [64]         0x1E0 COMMITTED_TCB u64
    0x1E8 CURRENT_BUILD/MINOR/MAJOR u8   0x1EC COMMITTED_BUILD/MINOR/MAJOR u8
    0x1F0 LAUNCH_TCB u64       0x1F8 LAUNCH_MIT_VECTOR u64, 0x200 CURRENT_MIT_VECTOR u64 (v5)
    0x2A0 SIGNATURE [0x200]: R (72 bytes, little-endian) at +0, S (72 bytes) at +0x48
    0x4A0 end; the signature covers [0x000, 0x2A0)

TCB_VERSION (ABI spec, Table "TCB_VERSION Structure"): before Turin, byte 0 BOOT_LOADER, 1 TEE,
2-5 reserved, 6 SNP, 7 MICROCODE; on Turin (family 1Ah) byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP,
4-6 reserved, 7 MICROCODE.

Guest POLICY (ABI spec, Table "Guest Policy Structure"): bits 7:0 ABI_MINOR, 15:8
ABI_MAJOR, 16 SMT allowed, 17 reserved (must be 1), 18 MIGRATE_MA, 19 DEBUG, 20 SINGLE_SOCKET.

Containers (``parse_snp_evidence`` tells them apart by their first bytes; none is ambiguous,
because a bare report starts with its version, 2..5, as a little-endian u32):

* ``raw`` — the 1184-byte report, possibly followed by unsigned padding;
* ``azure-hcl`` — Azure's HCL report (starts with ``HCLA``): a 32-byte header, the SNP report at
  0x20, then IGVM_REQUEST_DATA {data_size u32, version u32, report_type u32 (2 = SNP),
  report_data_hash_type u32 (1 SHA-256, 2 SHA-384, 3 SHA-512), variable_data_size u32,
  variable_data}; REPORT_DATA starts with the hash of variable_data (Microsoft azure-cvm-tooling,
  ``az-cvm-vtpm`` crate, ``hcl`` module; layout checked against the vectors). The layout and the
  agreement of its sizes are ``verify/azure_hcl.py``'s, shared with the TPM trust's AK reader;
  the bytes after the header's report size are ``trailing``;
* ``report+certs`` — this project's attester's CBOR map ``{1: report, 2: auxblob}``, the auxblob
  being the GHCB certificate table (GHCB spec pub. 56421 §4.1.8.1: 24-byte entries {GUID,
  offset u32, length u32} ended by an all-zero entry; offsets from the table start).
"""

from __future__ import annotations

import io
import struct
import uuid
from dataclasses import dataclass

import cbor2

from atls_proxy.cborwalk import Walker
from atls_proxy.errors import DecodeError
from atls_proxy.verify.azure_hcl import HCL_MAGIC, parse_hcl_layout

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
MIN_REPORT_VERSION = 2  # version 1 (ABI < 1.51) predates the fields verified here
MAX_REPORT_VERSION = 5  # newest version in ABI spec rev. 1.57/1.58
CPUID_MIN_VERSION = 3
MIT_VECTOR_MIN_VERSION = 5
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1  # ABI spec Appendix B, Table "Signature Algorithm Encodings"
ECDSA_COMPONENT_SIZE = 72  # ABI spec Appendix B, Table "ECDSA P-384 with SHA-384 Signature": R, S
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

# Evidence larger than this is not one SNP report in any container we know: the Azure HCL
# report is 2600 bytes, the report plus a GHCB table with VCEK+ASK+ARK about 6 KB. 64 KiB leaves
# room for padding and bounds the parsing (and CBOR decoding) of a wrong input.
MAX_EVIDENCE_SIZE = 64 * 1024
# The CBOR container is a flat map of two byte strings.
MAX_CBOR_DEPTH = 4
# GHCB certificate tables hold 3 entries (VCEK, ASK, ARK) and maybe a few more; 32 bounds work.
MAX_CERT_TABLE_ENTRIES = 32
CERT_TABLE_ENTRY_SIZE = 24

CONTAINER_RAW = "raw"
CONTAINER_AZURE_HCL = "azure-hcl"
CONTAINER_REPORT_CERTS = "report+certs"
CBOR_KEY_REPORT = 1
CBOR_KEY_AUXBLOB = 2

# GHCB spec §4.1.8.1 GUIDs. Tables in the wild use both byte orders (RFC 4122 and the EFI
# little-endian one); both are accepted, as the certificates are classified by subject anyway.
CERT_TABLE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ARK",
}
_GUID_BY_BYTES = {g.bytes: n for g, n in CERT_TABLE_GUIDS.items()} | {
    g.bytes_le: n for g, n in CERT_TABLE_GUIDS.items()
}


@dataclass(frozen=True, slots=True)
class Tcb:
    """One TCB_VERSION, decoded for a product line (``fmc`` is None before Turin)."""

    raw: bytes
    turin: bool
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp}
        out["microcode"] = self.microcode
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.components().items()]
        return f"{self.raw.hex()} ({' '.join(parts)})"


def decode_tcb(raw: bytes, turin: bool) -> Tcb:
    """ABI spec Table "TCB_VERSION Structure": the layout differs before and from Turin."""
    if len(raw) != 8:
        raise DecodeError("a TCB_VERSION is 8 bytes")
    if turin:
        return Tcb(raw, True, raw[1], raw[2], raw[3], raw[7], raw[0])
    return Tcb(raw, False, raw[0], raw[1], raw[6], raw[7], None)


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """The fields of one ATTESTATION_REPORT (module docstring for offsets)."""

    raw: bytes  # exactly REPORT_SIZE bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None  # family, model, stepping (version >= 3)
    chip_id: bytes
    committed_tcb: bytes
    current_version: tuple[int, int, int]  # major, minor, build
    committed_version: tuple[int, int, int]
    launch_tcb: bytes
    mit_vectors: tuple[int, int] | None  # launch, current (version >= 5)
    signature_r: int
    signature_s: int

    @property
    def signed(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0x7

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info & 0x2)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 0x1)

    def registers(self) -> dict[str, bytes]:
        """The launch-time values a policy can pin (``policy.REGISTER_SIZES``)."""
        return {
            "measurement": self.measurement,
            "host_data": self.host_data,
            "id_key_digest": self.id_key_digest,
            "author_key_digest": self.author_key_digest,
            "family_id": self.family_id,
            "image_id": self.image_id,
        }

    def describe(self) -> str:
        key = {SIGNING_KEY_VCEK: "VCEK", SIGNING_KEY_VLEK: "VLEK", SIGNING_KEY_NONE: "none"}
        cpuid = ""
        if self.cpuid is not None:
            cpuid = f", CPUID family {self.cpuid[0]:#x} model {self.cpuid[1]:#x} stepping {self.cpuid[2]}"
        major, minor, build = self.current_version
        return (
            f"ATTESTATION_REPORT v{self.version}, signing key "
            f"{key.get(self.signing_key, f'reserved ({self.signing_key})')}, VMPL {self.vmpl}, "
            f"firmware {major}.{minor}.{build}{cpuid}"
        )


def parse_report(data: bytes) -> AttestationReport:
    """Exactly one report (``REPORT_SIZE`` bytes). Raises ``DecodeError``."""
    if len(data) != REPORT_SIZE:
        raise DecodeError(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(data)}")
    (version,) = struct.unpack_from("<I", data, 0x00)
    if not MIN_REPORT_VERSION <= version <= MAX_REPORT_VERSION:
        raise DecodeError(
            f"report version {version} is not supported "
            f"({MIN_REPORT_VERSION}..{MAX_REPORT_VERSION})"
        )
    guest_svn, policy = struct.unpack_from("<IQ", data, 0x04)
    vmpl, algo = struct.unpack_from("<II", data, 0x30)
    platform_info, key_info = struct.unpack_from("<QI", data, 0x40)
    cpuid = (data[0x188], data[0x189], data[0x18A]) if version >= CPUID_MIN_VERSION else None
    mit = struct.unpack_from("<QQ", data, 0x1F8) if version >= MIT_VECTOR_MIN_VERSION else None
    sig = data[SIGNED_SIZE:]
    return AttestationReport(
        raw=bytes(data),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=vmpl,
        signature_algo=algo,
        current_tcb=data[0x38:0x40],
        platform_info=platform_info,
        key_info=key_info,
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=cpuid,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        mit_vectors=(mit[0], mit[1]) if mit is not None else None,
        signature_r=int.from_bytes(sig[:ECDSA_COMPONENT_SIZE], "little"),
        signature_s=int.from_bytes(sig[ECDSA_COMPONENT_SIZE : 2 * ECDSA_COMPONENT_SIZE], "little"),
    )


@dataclass(frozen=True, slots=True)
class HclData:
    """Azure HCL wrapper fields around the report."""

    header_version: int
    request_type: int
    hash_name: str
    variable_data: bytes


@dataclass(frozen=True, slots=True)
class SnpEvidence:
    """A report and what came with it."""

    report: AttestationReport
    container: str  # CONTAINER_*
    trailing: bytes  # unsigned bytes after the structure, reported and ignored
    hcl: HclData | None = None
    # (label, DER) pairs from a GHCB certificate table; label is VCEK/VLEK/ASK/ARK.
    certificates: tuple[tuple[str, bytes], ...] = ()
    ignored_entries: int = 0  # table entries with other GUIDs (e.g. extra platform info)

    def describe(self) -> str:
        text = self.report.describe()
        if self.container == CONTAINER_AZURE_HCL:
            text += " in an Azure HCL report"
        elif self.container == CONTAINER_REPORT_CERTS:
            labels = ", ".join(label for label, _ in self.certificates) or "none"
            text += f" with a GHCB certificate table ({labels})"
        return text


def _parse_hcl(data: bytes) -> SnpEvidence:
    layout = parse_hcl_layout(data)  # sizes checked there (verify/azure_hcl.py)
    if layout.report_type != "snp":
        raise DecodeError(f"Azure HCL report type is {layout.report_type.upper()}, not SEV-SNP")
    return SnpEvidence(
        report=parse_report(layout.hw_report[:REPORT_SIZE]),
        container=CONTAINER_AZURE_HCL,
        trailing=layout.trailing,
        hcl=HclData(
            layout.header_version, layout.request_type, layout.hash_name, layout.variable_data
        ),
    )


def parse_cert_table(table: bytes) -> tuple[tuple[tuple[str, bytes], ...], int]:
    """GHCB certificate table → ((label, DER), …) for the known GUIDs, and the count of others."""
    certs: list[tuple[str, bytes]] = []
    ignored = 0
    for index in range(MAX_CERT_TABLE_ENTRIES + 1):
        at = index * CERT_TABLE_ENTRY_SIZE
        if at + CERT_TABLE_ENTRY_SIZE > len(table):
            raise DecodeError("GHCB certificate table has no terminating all-zero entry")
        entry = table[at : at + CERT_TABLE_ENTRY_SIZE]
        if not any(entry):
            return tuple(certs), ignored
        offset, length = struct.unpack_from("<II", entry, 16)
        if offset + length > len(table) or offset < at + CERT_TABLE_ENTRY_SIZE:
            raise DecodeError(f"GHCB certificate table entry {index} points outside the table")
        label = _GUID_BY_BYTES.get(entry[:16])
        if label is None:
            ignored += 1
        else:
            certs.append((label, table[offset : offset + length]))
    raise DecodeError(f"GHCB certificate table has more than {MAX_CERT_TABLE_ENTRIES} entries")


def _parse_cbor(data: bytes) -> SnpEvidence:
    # No tags, definite lengths, shortest heads (atls_proxy/cborwalk.py): the map is two byte
    # strings, and nothing else may make cbor2 build more than the bytes say.
    Walker(data, "report+certs container", max_depth=MAX_CBOR_DEPTH).item()
    try:
        decoder = cbor2.CBORDecoder(io.BytesIO(data), max_depth=MAX_CBOR_DEPTH)
        value = decoder.decode()
        rest = data[decoder.fp.tell() :]
    except Exception as exc:  # cbor2 raises several types on garbage; none may escape
        raise DecodeError(f"report+certs container is not CBOR: {exc}") from None
    if (
        not isinstance(value, dict)
        or set(value) != {CBOR_KEY_REPORT, CBOR_KEY_AUXBLOB}
        or not all(isinstance(v, bytes) for v in value.values())
    ):
        raise DecodeError("report+certs container is not the map {1: report, 2: auxblob}")
    if rest:
        raise DecodeError("bytes after the report+certs CBOR map")
    raw = value[CBOR_KEY_REPORT]
    report = parse_report(raw[:REPORT_SIZE])
    certs, ignored = parse_cert_table(value[CBOR_KEY_AUXBLOB])
    return SnpEvidence(
        report=report,
        container=CONTAINER_REPORT_CERTS,
        trailing=raw[REPORT_SIZE:],
        certificates=certs,
        ignored_entries=ignored,
    )


def parse_snp_evidence(data: bytes) -> SnpEvidence:
    """A bare report, an Azure HCL report or a report+certs map. Raises ``DecodeError``."""
    if len(data) > MAX_EVIDENCE_SIZE:
        raise DecodeError(f"evidence larger than {MAX_EVIDENCE_SIZE} bytes")
    if data[:4] == HCL_MAGIC:
        return _parse_hcl(data)
    if data[:1] and data[0] >> 5 == 5:  # CBOR major type 5 (map), RFC 8949 §3.1
        return _parse_cbor(data)
    if len(data) < REPORT_SIZE:
        raise DecodeError(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(data)}")
    return SnpEvidence(
        report=parse_report(data[:REPORT_SIZE]),
        container=CONTAINER_RAW,
        trailing=data[REPORT_SIZE:],
    )
