"""The TPM evidence encoding carried in a CMW record, and readers for JSON quote formats (sans-IO).

A TPM quote alone is not evidence a verifier can appraise: the PCR values it digests travel beside
it. This project's encoding (media type ``application/vnd.atls-proxy.tpm-quote+cbor``) is one
CBOR map with integer keys, decoded strictly (``atls_proxy.verify.cose.decode_cbor``)::

    tpm-evidence = {
        1 => bstr,                ; TPMS_ATTEST exactly as the TPM returned it (TPM2B contents)
        2 => bstr,                ; TPMT_SIGNATURE as the TPM returned it
        3 => { + uint => bstr },  ; PCR index => value, for the bank named by key 4
        4 => tstr,                ; that bank: "sha1" / "sha256" / "sha384" / "sha512"
        ? 5 => bstr,              ; the AK's SubjectPublicKeyInfo (DER), a hint: it must still be
                                  ; one of the verifier's trusted AKs
    }

No other key is allowed. The PCR map may hold PCRs the quote does not select; they are not
covered by the signature and the appraisal ignores them (and says so).

``evidence_from_json`` converts the JSON shapes found in the vectors into this encoding:

* trustee's TPM attester (swtpm sample ``tpm/trustee/tpm_evidence.json``)::

    {"ak_public": base64(SPKI DER), "tpm_quote": {"message": base64(TPMS_ATTEST),
     "signature": base64(TPMT_SIGNATURE), "pcrs": [hex, …]}}

* Azure vTPM quotes (``tpm-quote-v1.json``, az-cvm-vtpm's ``Quote``)::

    {"message": hex | [byte, …], "signature": hex | [byte, …], "pcrs": [hex | [byte, …], …]}

  The signature is the raw RSASSA-PKCS1-v1_5 / SHA-256 signature of the Azure vTPM AK (the format
  has no TPMT_SIGNATURE); it is wrapped as one, scheme RSASSA, hash SHA-256.
* Azure SNP evidence (``evidence-genoa.json``): ``{"quote": <Azure quote>, "report": [byte, …]
  (HCL report), "vcek": PEM}``; the AK (HCLAkPub) is taken from the HCL report as the key-5 hint.

In every JSON shape the PCR list holds PCR 0, 1, 2, … in index order; the bank follows from the
values' length (20/32/48/64 bytes).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cbor2

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads
from atls_proxy.verify.cose import decode_cbor
from atls_proxy.verify.tpm.azure import parse_hcl_report
from atls_proxy.verify.tpm.structures import (
    HASH_SIZES,
    MAX_PCR_INDEX,
    MAX_STRUCTURE_SIZE,
    encode_rsa_signature,
)

KEY_ATTEST = 1
KEY_SIGNATURE = 2
KEY_PCRS = 3
KEY_PCR_BANK = 4
KEY_AK_SPKI = 5
_KEYS = frozenset({KEY_ATTEST, KEY_SIGNATURE, KEY_PCRS, KEY_PCR_BANK, KEY_AK_SPKI})
# An RSA-4096 SubjectPublicKeyInfo DER is 550 bytes; 2 KiB bounds the hint.
MAX_AK_SPKI_SIZE = 2048
# JSON inputs: the Azure SNP evidence with its HCL report and VCEK is ~37 KB as JSON byte arrays.
MAX_JSON_SIZE = 256 * 1024
_SIZE_BANKS = {size: name for name, size in HASH_SIZES.items()}


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    """The decoded evidence map (not yet parsed or verified)."""

    attest: bytes
    signature: bytes
    pcrs: Mapping[int, bytes]
    pcr_bank: str
    ak_spki: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pcrs", MappingProxyType(dict(sorted(self.pcrs.items()))))


def encode_evidence(evidence: TpmEvidence) -> bytes:
    """The CBOR encoding of ``evidence`` (module docstring); deterministic (RFC 8949 §4.2.1)."""
    _validate(evidence)
    out: dict[int, Any] = {
        KEY_ATTEST: evidence.attest,
        KEY_SIGNATURE: evidence.signature,
        KEY_PCRS: dict(evidence.pcrs),
        KEY_PCR_BANK: evidence.pcr_bank,
    }
    if evidence.ak_spki is not None:
        out[KEY_AK_SPKI] = evidence.ak_spki
    return bytes(cbor2.dumps(out, canonical=True))


def _validate(e: TpmEvidence) -> None:
    for name, value in (("TPMS_ATTEST", e.attest), ("TPMT_SIGNATURE", e.signature)):
        if not value or len(value) > MAX_STRUCTURE_SIZE:
            raise DecodeError(f"TPM evidence: {name} must be 1..{MAX_STRUCTURE_SIZE} bytes")
    if e.pcr_bank not in HASH_SIZES:
        raise DecodeError(
            f"TPM evidence: PCR bank {e.pcr_bank[:16]!r} is not one of " + ", ".join(HASH_SIZES)
        )
    size = HASH_SIZES[e.pcr_bank]
    if len(e.pcrs) > MAX_PCR_INDEX + 1:
        raise DecodeError(f"TPM evidence: more than {MAX_PCR_INDEX + 1} PCR values")
    for index, value in e.pcrs.items():
        if type(index) is not int or not 0 <= index <= MAX_PCR_INDEX:
            raise DecodeError(f"TPM evidence: PCR index {index!r} is not 0..{MAX_PCR_INDEX}")
        if type(value) is not bytes or len(value) != size:
            raise DecodeError(f"TPM evidence: PCR {index} is not a {size}-byte {e.pcr_bank} value")
    if e.ak_spki is not None and (not e.ak_spki or len(e.ak_spki) > MAX_AK_SPKI_SIZE):
        raise DecodeError(f"TPM evidence: the AK SPKI must be 1..{MAX_AK_SPKI_SIZE} bytes")


def decode_evidence(data: bytes) -> TpmEvidence:
    """Decode the CBOR evidence map strictly. Raises ``DecodeError`` only."""
    doc = decode_cbor(bytes(data), "TPM evidence")
    if not isinstance(doc, dict):
        raise DecodeError("TPM evidence: not a CBOR map")
    unknown = set(doc) - _KEYS
    if unknown:
        raise DecodeError(f"TPM evidence: unknown key(s) {sorted(map(repr, unknown))}")
    for key, name in ((KEY_ATTEST, "TPMS_ATTEST"), (KEY_SIGNATURE, "TPMT_SIGNATURE")):
        if type(doc.get(key)) is not bytes:
            raise DecodeError(f"TPM evidence: key {key} ({name}) is missing or not a byte string")
    pcrs = doc.get(KEY_PCRS)
    if not isinstance(pcrs, dict):
        raise DecodeError(f"TPM evidence: key {KEY_PCRS} (PCR values) is missing or not a map")
    bank = doc.get(KEY_PCR_BANK)
    if type(bank) is not str:
        raise DecodeError(f"TPM evidence: key {KEY_PCR_BANK} (PCR bank) is missing or not text")
    ak = doc.get(KEY_AK_SPKI)
    if ak is not None and type(ak) is not bytes:
        raise DecodeError(f"TPM evidence: key {KEY_AK_SPKI} (AK SPKI) is not a byte string")
    if not all(type(k) is int for k in pcrs):
        raise DecodeError("TPM evidence: PCR indexes must be unsigned integers")
    evidence = TpmEvidence(
        attest=doc[KEY_ATTEST], signature=doc[KEY_SIGNATURE], pcrs=pcrs, pcr_bank=bank, ak_spki=ak
    )
    _validate(evidence)
    return evidence


# ----------------------------------------------------------------------------------------------
# JSON readers
# ----------------------------------------------------------------------------------------------


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"TPM JSON: {name} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"TPM JSON: {name} is not base64") from exc


def _bytes(value: Any, name: str) -> bytes:
    """Hex text or a JSON array of byte values."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            raise DecodeError(f"TPM JSON: {name} is not hex") from exc
    if isinstance(value, list) and all(type(b) is int and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise DecodeError(f"TPM JSON: {name} is neither hex text nor an array of bytes")


def _pcr_list(values: Any) -> tuple[dict[int, bytes], str]:
    if not isinstance(values, list) or not values or len(values) > MAX_PCR_INDEX + 1:
        raise DecodeError(f"TPM JSON: pcrs is not a list of 1..{MAX_PCR_INDEX + 1} values")
    pcrs = {i: _bytes(v, f"pcrs[{i}]") for i, v in enumerate(values)}
    sizes = {len(v) for v in pcrs.values()}
    if len(sizes) != 1 or next(iter(sizes)) not in _SIZE_BANKS:
        raise DecodeError("TPM JSON: PCR values are not all of one bank's digest size")
    return pcrs, _SIZE_BANKS[sizes.pop()]


def _azure_quote(quote: Any, ak_spki: bytes | None) -> TpmEvidence:
    if not isinstance(quote, dict) or not {"message", "signature", "pcrs"} <= set(quote):
        raise DecodeError("TPM JSON: an Azure quote has message, signature and pcrs")
    pcrs, bank = _pcr_list(quote["pcrs"])
    return TpmEvidence(
        attest=_bytes(quote["message"], "message"),
        signature=encode_rsa_signature(_bytes(quote["signature"], "signature")),
        pcrs=pcrs,
        pcr_bank=bank,
        ak_spki=ak_spki,
    )


def evidence_from_json(data: bytes, *, ak_spki: bytes | None = None) -> bytes:
    """Convert one of the JSON quote formats (module docstring) to the CBOR evidence encoding.

    ``ak_spki`` (DER) is put in key 5 when the JSON does not carry the AK itself. Raises
    ``DecodeError`` only.
    """
    if len(data) > MAX_JSON_SIZE:
        raise DecodeError(f"TPM JSON: larger than {MAX_JSON_SIZE} bytes")
    try:
        doc = json_loads(bytes(data))
    except ValueError as exc:
        raise DecodeError(f"TPM JSON: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DecodeError("TPM JSON: not an object")
    if "tpm_quote" in doc:  # trustee TPM attester
        quote = doc["tpm_quote"]
        if not isinstance(quote, dict) or not {"message", "signature", "pcrs"} <= set(quote):
            raise DecodeError("TPM JSON: tpm_quote has message, signature and pcrs")
        pcrs, bank = _pcr_list(quote["pcrs"])
        carried = _b64(doc["ak_public"], "ak_public") if "ak_public" in doc else None
        evidence = TpmEvidence(
            attest=_b64(quote["message"], "message"),
            signature=_b64(quote["signature"], "signature"),
            pcrs=pcrs,
            pcr_bank=bank,
            ak_spki=carried if carried is not None else ak_spki,
        )
    elif "quote" in doc and "report" in doc:  # Azure evidence with its HCL report
        hcl = parse_hcl_report(_bytes(doc["report"], "report"))
        evidence = _azure_quote(doc["quote"], hcl.ak_spki_der)
    else:  # a bare Azure quote
        evidence = _azure_quote(doc, ak_spki)
    return encode_evidence(evidence)
