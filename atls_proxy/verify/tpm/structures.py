"""TPM 2.0 wire structures a quote verifier needs: TPMS_ATTEST (quote) and TPMT_SIGNATURE (sans-IO).

All integers are big-endian (TCG TPM 2.0 Library Part 1 §18 "Marshaling"). Every TPM2B size is
checked against the structure's maximum before its bytes are taken, and every list count against
a cap, so a hostile input costs at most a few hundred bytes of reads. The parsers raise
``DecodeError`` and nothing else.

TPMS_ATTEST (Part 2 §10.12.12)::

    TPM_GENERATED        magic            UINT32  = 0xff544347 (TPM_GENERATED_VALUE, §6.2)
    TPMI_ST_ATTEST       type             UINT16  = 0x8018 (TPM_ST_ATTEST_QUOTE, §6.9)
    TPM2B_NAME           qualifiedSigner  UINT16 size ‖ name       (§10.5.3)
    TPM2B_DATA           extraData        UINT16 size ‖ bytes      (§10.4.3)
    TPMS_CLOCK_INFO      clockInfo        UINT64 clock ‖ UINT32 resetCount ‖ UINT32 restartCount
                                          ‖ BYTE safe                 (§10.11.1)
    UINT64               firmwareVersion
    TPMS_QUOTE_INFO      attested         TPML_PCR_SELECTION ‖ TPM2B_DIGEST pcrDigest (§10.12.4)

TPML_PCR_SELECTION (§10.9.7) is UINT32 count ‖ count × TPMS_PCR_SELECTION (§10.6.2: UINT16 hash ‖
BYTE sizeofSelect ‖ pcrSelect[sizeofSelect], bit n of byte i selecting PCR 8i+n).

TPMT_SIGNATURE (§11.3.4): UINT16 sigAlg ‖ TPMU_SIGNATURE, where for RSASSA (0x0014) and RSAPSS
(0x0016) the union is TPMS_SIGNATURE_RSA (§11.3.1: UINT16 hash ‖ TPM2B_PUBLIC_KEY_RSA sig) and for
ECDSA (0x0018) TPMS_SIGNATURE_ECC (§11.3.2: UINT16 hash ‖ TPM2B_ECC_PARAMETER r ‖ … s).
Algorithm IDs are from the TCG Algorithm Registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from atls_proxy.errors import DecodeError

TPM_GENERATED_VALUE = 0xFF544347  # Part 2 §6.2
TPM_ST_ATTEST_QUOTE = 0x8018  # Part 2 §6.9

# TCG Algorithm Registry: hash algorithms (name, digest size).
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
HASH_ALGS: dict[int, tuple[str, int]] = {
    TPM_ALG_SHA1: ("sha1", 20),
    TPM_ALG_SHA256: ("sha256", 32),
    TPM_ALG_SHA384: ("sha384", 48),
    TPM_ALG_SHA512: ("sha512", 64),
}
HASH_IDS = {name: alg for alg, (name, _) in HASH_ALGS.items()}
HASH_SIZES = {name: size for name, size in HASH_ALGS.values()}
# TCG Algorithm Registry: signature schemes.
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018
SIG_SCHEMES = {TPM_ALG_RSASSA: "RSASSA", TPM_ALG_RSAPSS: "RSAPSS", TPM_ALG_ECDSA: "ECDSA"}

# Structure maxima (Part 2): TPMU_NAME is a TPMT_HA (2 + 64 bytes) or a 4-byte handle (§10.5.2);
# TPM2B_DATA holds at most sizeof(TPMT_HA) = 66 (§10.4.3); TPM2B_DIGEST at most sizeof(TPMU_HA) =
# 64 (§10.4.2); TPM2B_PUBLIC_KEY_RSA at most MAX_RSA_KEY_BYTES, 512 for RSA-4096 (§11.2.4.5);
# TPM2B_ECC_PARAMETER at most MAX_ECC_KEY_BYTES, 66 for P-521 (§11.2.5.1).
MAX_NAME_SIZE = 66
MAX_EXTRA_DATA_SIZE = 66
MAX_DIGEST_SIZE = 64
MAX_RSA_SIGNATURE_SIZE = 512
MAX_ECC_PARAMETER_SIZE = 66
# HASH_COUNT (banks a TPM implements) is a handful; 16 bounds the list. PCR_SELECT_MAX is
# ceil(IMPLEMENTATION_PCR / 8): 3 for the 24 PCRs of a PC Client TPM; 8 allows 64 PCRs.
MAX_PCR_SELECTIONS = 16
MAX_PCR_SELECT_SIZE = 8
MAX_PCR_INDEX = 8 * MAX_PCR_SELECT_SIZE - 1
# A quote is about 150 bytes and a TPMT_SIGNATURE at most ~520: 4 KiB bounds either input.
MAX_STRUCTURE_SIZE = 4096

# libtpms (swtpm's TPM) reports FIRMWARE_V1 0x20191023 ‖ FIRMWARE_V2 0x00163636 as its
# firmwareVersion; the vectors README states the trustee sample with this value is from swtpm.
KNOWN_SOFTWARE_TPM_FIRMWARE: dict[int, str] = {
    0x2019102300163636: "libtpms (swtpm): a SOFTWARE TPM, no hardware root of trust",
}


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError(f"{self.what}: truncated in {field} at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def tpm2b(self, maximum: int, field: str) -> bytes:
        size = self.uint(2, field)
        if size > maximum:
            raise DecodeError(f"{self.what}: {field} size {size} exceeds its maximum {maximum}")
        return self.take(size, field)


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the PCR indexes it selects, ascending."""

    hash_alg: int
    pcrs: tuple[int, ...]

    @property
    def hash_name(self) -> str:
        return HASH_ALGS[self.hash_alg][0]


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed TPMS_ATTEST of type quote. ``signed`` is exactly the bytes the AK signed."""

    signed: bytes
    trailing: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True, slots=True)
class TpmSignature:
    """A parsed TPMT_SIGNATURE: RSA schemes carry ``signature``, ECDSA carries ``r`` and ``s``."""

    sig_alg: int
    hash_alg: int
    signature: bytes = b""
    r: int = 0
    s: int = 0
    trailing: bytes = b""

    @property
    def scheme(self) -> str:
        return SIG_SCHEMES[self.sig_alg]

    @property
    def hash_name(self) -> str:
        return HASH_ALGS[self.hash_alg][0]


def _hash_alg(value: int, field: str, what: str) -> int:
    if value not in HASH_ALGS:
        raise DecodeError(f"{what}: {field} 0x{value:04x} is not SHA-1/256/384/512")
    return value


def parse_quote(data: bytes) -> Quote:
    """Parse a TPMS_ATTEST that must be a quote (module docstring). Raises ``DecodeError``."""
    data = bytes(data)
    what = "TPMS_ATTEST"
    if len(data) > MAX_STRUCTURE_SIZE:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the {MAX_STRUCTURE_SIZE}-byte cap")
    r = _Reader(data, what)
    magic = r.uint(4, "magic")
    if magic != TPM_GENERATED_VALUE:
        raise DecodeError(
            f"{what}: magic 0x{magic:08x} is not TPM_GENERATED_VALUE 0x{TPM_GENERATED_VALUE:08x} "
            "(not a structure the TPM generated)"
        )
    st = r.uint(2, "type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise DecodeError(f"{what}: type 0x{st:04x} is not TPM_ST_ATTEST_QUOTE (0x8018)")
    signer = r.tpm2b(MAX_NAME_SIZE, "qualifiedSigner")
    extra = r.tpm2b(MAX_EXTRA_DATA_SIZE, "extraData")
    clock = r.uint(8, "clockInfo.clock")
    reset_count = r.uint(4, "clockInfo.resetCount")
    restart_count = r.uint(4, "clockInfo.restartCount")
    safe = r.uint(1, "clockInfo.safe")
    if safe > 1:
        raise DecodeError(f"{what}: clockInfo.safe is {safe}, not TPMI_YES_NO")
    firmware = r.uint(8, "firmwareVersion")
    count = r.uint(4, "pcrSelect.count")
    if count > MAX_PCR_SELECTIONS:
        raise DecodeError(f"{what}: {count} PCR selections exceed the cap {MAX_PCR_SELECTIONS}")
    selections = []
    seen: set[int] = set()
    for i in range(count):
        alg = _hash_alg(r.uint(2, f"pcrSelections[{i}].hash"), f"pcrSelections[{i}].hash", what)
        if alg in seen:
            raise DecodeError(f"{what}: bank {HASH_ALGS[alg][0]} selected twice")
        seen.add(alg)
        size = r.uint(1, f"pcrSelections[{i}].sizeofSelect")
        if size > MAX_PCR_SELECT_SIZE:
            raise DecodeError(f"{what}: sizeofSelect {size} exceeds {MAX_PCR_SELECT_SIZE}")
        bitmap = r.take(size, f"pcrSelections[{i}].pcrSelect")
        pcrs = tuple(
            8 * byte + bit for byte in range(size) for bit in range(8) if bitmap[byte] >> bit & 1
        )
        selections.append(PcrSelection(hash_alg=alg, pcrs=pcrs))
    digest = r.tpm2b(MAX_DIGEST_SIZE, "pcrDigest")
    return Quote(
        signed=data[: r.pos],
        trailing=data[r.pos :],
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware,
        selections=tuple(selections),
        pcr_digest=digest,
    )


def parse_signature(data: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE of an RSASSA, RSAPSS or ECDSA scheme. Raises ``DecodeError``."""
    data = bytes(data)
    what = "TPMT_SIGNATURE"
    if len(data) > MAX_STRUCTURE_SIZE:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the {MAX_STRUCTURE_SIZE}-byte cap")
    r = _Reader(data, what)
    sig_alg = r.uint(2, "sigAlg")
    if sig_alg not in SIG_SCHEMES:
        raise DecodeError(
            f"{what}: sigAlg 0x{sig_alg:04x} is not RSASSA (0x0014), RSAPSS (0x0016) or ECDSA "
            "(0x0018)"
        )
    hash_alg = _hash_alg(r.uint(2, "hash"), "hash", what)
    if sig_alg == TPM_ALG_ECDSA:
        sig_r = r.tpm2b(MAX_ECC_PARAMETER_SIZE, "signatureR")
        sig_s = r.tpm2b(MAX_ECC_PARAMETER_SIZE, "signatureS")
        if not sig_r or not sig_s:
            raise DecodeError(f"{what}: empty ECDSA r or s")
        return TpmSignature(
            sig_alg=sig_alg,
            hash_alg=hash_alg,
            r=int.from_bytes(sig_r, "big"),
            s=int.from_bytes(sig_s, "big"),
            trailing=data[r.pos :],
        )
    sig = r.tpm2b(MAX_RSA_SIGNATURE_SIZE, "sig")
    if not sig:
        raise DecodeError(f"{what}: empty RSA signature")
    return TpmSignature(sig_alg=sig_alg, hash_alg=hash_alg, signature=sig, trailing=data[r.pos :])


def encode_rsa_signature(
    signature: bytes, *, hash_name: str = "sha256", pss: bool = False
) -> bytes:
    """A TPMT_SIGNATURE around a raw RSA signature (for sources that ship only the raw bytes)."""
    if not signature or len(signature) > MAX_RSA_SIGNATURE_SIZE:
        raise DecodeError(f"a raw RSA signature is 1..{MAX_RSA_SIGNATURE_SIZE} bytes")
    alg = TPM_ALG_RSAPSS if pss else TPM_ALG_RSASSA
    return (
        alg.to_bytes(2, "big")
        + HASH_IDS[hash_name].to_bytes(2, "big")
        + len(signature).to_bytes(2, "big")
        + signature
    )
