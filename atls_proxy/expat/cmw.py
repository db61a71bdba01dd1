"""RATS Conceptual Message Wrappers (RFC 9999, from draft-ietf-rats-msg-wrap-23) — sans-IO codec.

    cbor-record     = [ type: media-type / coap-content-format (uint .size 2), value: bytes, ? ind: uint ]
    cbor-collection = { ? "__cmwc_t": uri / oid, + (int / text) => cbor-cmw }
    tag CMW         = #6.<TN(cf)>(bytes)     TN(cf) = 1668546817 + (cf // 255) * 256 + cf % 255
    json-record     = [ type: media-type, value: base64url (no padding), ? ind: uint ]
    json-collection = { ? "__cmwc_t": ..., + text => json-cmw }

Decoding demultiplexes on the first byte (RFC 9999 "Demuxing"). This profile is strict about CBOR:
input must be in preferred serialization with definite lengths (RFC 8949 §4.1), which we check by
re-encoding the decoded value and comparing bytes. That one rule rejects duplicate map keys,
indefinite lengths and over-long integer encodings — every way two parsers could read one CMW
differently. Nesting depth, member count and total size are capped, and before cbor2 sees the
bytes a walk (atls_proxy/cborwalk.py) refuses every tag but the CMW ones: value sharing (tags
28/29) would let a few hundred bytes decode into a graph that takes exponential time to re-encode.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import cbor2

from atls_proxy.cborwalk import Walker
from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads

# ind bits (RFC 9999 "CM Type").
IND_REFERENCE_VALUES = 1
IND_ENDORSEMENTS = 2
IND_EVIDENCE = 4
IND_ATTESTATION_RESULT = 8
IND_APPRAISAL_POLICY = 16

COLLECTION_TYPE_KEY = "__cmwc_t"
# Expat carries cmw_data in a uint16-prefixed vector inside a uint16 extension (digest §1.3, O-13),
# and that extension in the first CertificateEntry's extensions<0..2^16-1> (RFC 8446 §4.4.2), whose
# 65535 bytes also hold the extension's own type and length: 65535 - 4 - 2 = 65529 bytes of CMW.
MAX_CMW_SIZE = 65529
# Collections of collections deeper than this have no use in Expat (one composite device: CPU + GPU).
MAX_DEPTH = 4
# Members of one collection: a CPU, a few accelerators, a TPM.
MAX_MEMBERS = 16
# RFC 6838 §4.2 restricts type and subtype names to 127 characters; parameters (eat_profile=...) add
# a URI. 1 KiB is generous for both.
MAX_MEDIA_TYPE = 1024
# TN() range of CMW tags (RFC 9277 App. B as used by RFC 9999).
TAG_MIN = 1668546817
TAG_MAX = 1668612095


@dataclass(frozen=True, slots=True)
class CMWRecord:
    media_type: str | int
    value: bytes
    ind: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.media_type, bool) or not isinstance(self.media_type, str | int):
            raise ValueError("CMW type is a media type string or a CoAP content-format number")
        if isinstance(self.media_type, int) and not 0 <= self.media_type <= 0xFFFF:
            raise ValueError("CoAP content-format is uint .size 2")
        if isinstance(self.media_type, str):
            if not 0 < len(self.media_type) <= MAX_MEDIA_TYPE:
                raise ValueError("media type must be 1..1024 characters")
            try:
                # A JSON CMW's "\ud800" escape decodes to a lone surrogate, which no UTF-8 (the
                # CBOR form, the appraisal cache's key, logs) can carry.
                self.media_type.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("media type is not valid Unicode text") from None
        if self.ind is not None and not 0 < self.ind < 1 << 32:
            raise ValueError("ind must be non-zero and at most 4 bytes")


@dataclass(frozen=True, slots=True)
class CMWCollection:
    members: Mapping[int | str, CMW]
    ctype: str | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a CMW collection has at least one member")
        if COLLECTION_TYPE_KEY in self.members:
            raise ValueError(f"{COLLECTION_TYPE_KEY} is reserved")


CMW = CMWRecord | CMWCollection


def tag_for_content_format(cf: int) -> int:
    """RFC 9277 App. B: TN(cf)."""
    return TAG_MIN + (cf // 255) * 256 + cf % 255


def content_format_for_tag(tag: int) -> int:
    off = tag - TAG_MIN
    if off < 0 or tag > TAG_MAX or off % 256 == 255:
        raise DecodeError(f"tag {tag} is not a CMW content-format tag")
    return (off // 256) * 255 + off % 256


def _to_cbor_obj(cmw: CMW) -> Any:
    if isinstance(cmw, CMWRecord):
        rec: list[Any] = [cmw.media_type, cmw.value]
        if cmw.ind is not None:
            rec.append(cmw.ind)
        return rec
    if len(cmw.members) > MAX_MEMBERS:  # what decode_cmw refuses, refused here too
        raise ValueError(f"CMW collection has more than {MAX_MEMBERS} members")
    out: dict[Any, Any] = {}
    if cmw.ctype is not None:
        out[COLLECTION_TYPE_KEY] = cmw.ctype
    for k, v in cmw.members.items():
        out[k] = _to_cbor_obj(v)
    return out


def encode_cmw(cmw: CMW) -> bytes:
    """CBOR-encode a record or collection (preferred serialization).

    Raises ``ValueError`` for more than ``MAX_CMW_SIZE`` bytes or a collection of more than
    ``MAX_MEMBERS`` members (``decode_cmw`` refuses both).
    """
    data: bytes = cbor2.dumps(_to_cbor_obj(cmw))
    if len(data) > MAX_CMW_SIZE:
        raise ValueError(f"CMW of {len(data)} bytes exceeds {MAX_CMW_SIZE}")
    return data


def _record_from(obj: list[Any], json_form: bool) -> CMWRecord:
    if not 2 <= len(obj) <= 3:
        raise DecodeError("CMW record has 2 or 3 elements")
    mtype, value = obj[0], obj[1]
    ind = obj[2] if len(obj) == 3 else None
    if json_form:
        if not isinstance(mtype, str) or not isinstance(value, str):
            raise DecodeError("JSON CMW record is [media-type string, base64url string, ?ind]")
        if "=" in value or not value.isascii():
            raise DecodeError("JSON CMW value must be base64url without padding")
        text = value
        try:
            value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise DecodeError("JSON CMW value is not base64url") from None
        # The decoder drops characters outside the alphabet and takes the standard alphabet's
        # "+" and "/" too: only the one canonical spelling (RFC 4648 §5, no padding, zero
        # trailing bits, §3.5) is accepted, so one CMW has one reading.
        if base64.urlsafe_b64encode(value).rstrip(b"=").decode() != text:
            raise DecodeError("JSON CMW value is not canonical base64url (RFC 4648 §5)")
    elif not isinstance(value, bytes):
        raise DecodeError("CBOR CMW record value must be a byte string")
    if isinstance(ind, bool) or (ind is not None and not isinstance(ind, int)):
        raise DecodeError("CMW ind must be an unsigned integer")
    if (
        isinstance(mtype, bool)
        or not isinstance(mtype, str | int)
        or (json_form and not isinstance(mtype, str))
    ):
        raise DecodeError("CMW type must be a media type or a CoAP content-format")
    try:
        return CMWRecord(mtype, value, ind)
    except ValueError as exc:
        raise DecodeError(f"CMW record: {exc}") from None


def _from_obj(obj: Any, depth: int, json_form: bool) -> CMW:
    if depth > MAX_DEPTH:
        raise DecodeError(f"CMW nested deeper than {MAX_DEPTH}")
    if isinstance(obj, list):
        return _record_from(obj, json_form)
    if isinstance(obj, cbor2.CBORTag) and not json_form:
        if not isinstance(obj.value, bytes):
            raise DecodeError("CMW tag content must be a byte string")
        return CMWRecord(content_format_for_tag(obj.tag), obj.value)
    if isinstance(obj, dict):
        if not obj:
            raise DecodeError("CMW collection is empty")
        # "__cmwc_t" labels the collection and is not a member (RFC 9999 cbor-collection).
        if len(obj) - (COLLECTION_TYPE_KEY in obj) > MAX_MEMBERS:
            raise DecodeError(f"CMW collection has more than {MAX_MEMBERS} members")
        ctype = obj.get(COLLECTION_TYPE_KEY)
        if ctype is not None and not isinstance(ctype, str):
            raise DecodeError(f"{COLLECTION_TYPE_KEY} must be a URI or OID string")
        members: dict[int | str, CMW] = {}
        for k, v in obj.items():
            if k == COLLECTION_TYPE_KEY:
                continue
            if (
                isinstance(k, bool)
                or not isinstance(k, int | str)
                or (json_form and not isinstance(k, str))
            ):
                raise DecodeError("CMW collection labels are integers or text")
            members[k] = _from_obj(v, depth + 1, json_form)
        if not members:
            raise DecodeError("CMW collection has no members")
        return CMWCollection(members, ctype)
    raise DecodeError(f"not a CMW ({type(obj).__name__})")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose labels are all different: a repeated label would give one CMW two
    readings (json.loads keeps the last, other parsers the first)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a JSON CMW collection repeats a label")
    return out


def decode_cmw(data: bytes) -> CMW:
    """Decode a CBOR or JSON CMW, choosing by the first byte (RFC 9999 "Demuxing")."""
    if not data:
        raise DecodeError("empty CMW")
    if len(data) > MAX_CMW_SIZE:
        raise DecodeError(f"CMW of {len(data)} bytes exceeds {MAX_CMW_SIZE}")
    first = data[0]
    if first in (0x5B, 0x7B):  # '[' JSON record, '{' JSON collection
        try:
            obj = json_loads(data, object_pairs_hook=_unique_members)
        except ValueError as exc:
            raise DecodeError(f"JSON CMW does not parse: {exc}") from None
        return _from_obj(obj, 0, json_form=True)
    if first in (0x82, 0x83, 0xDA) or 0xA1 <= first <= 0xBB:
        prefix = _last_prefix
        if prefix is not None and len(data) > len(prefix.data) and data.startswith(prefix.data):
            tail = _strict_cbor(data[len(prefix.data) :], "CBOR CMW")
            members = dict(prefix.members)
            members[prefix.last_label] = _from_obj(tail, 1, json_form=False)
            return CMWCollection(members, prefix.ctype)
        obj = _strict_cbor(data, "CBOR CMW")
        cmw = _from_obj(obj, 0, json_form=False)
        _remember_prefix(data, obj, cmw)
        return cmw
    if first in (0x9F, 0xBF, 0xA0):
        raise DecodeError("indefinite-length or empty CBOR CMW is not accepted by this profile")
    raise DecodeError(f"first byte 0x{first:02x} is not a CMW")


def _cmw_tag(tag: int) -> bool:
    return TAG_MIN <= tag <= TAG_MAX


# A collection nests a collection or a record (an array, or a tag around bytes) per level.
_WALK_DEPTH = 2 * MAX_DEPTH + 2


def _strict_cbor(data: bytes, what: str) -> Any:
    """One CBOR item that is all of ``data`` and in preferred serialization (module docstring).

    Walked first (atls_proxy/cborwalk.py): no tag but the CMW ones (RFC 9999), so no value
    sharing (tags 28/29) or string references (256/25), whose decoded graph a few hundred bytes
    can make exponentially large to re-encode; definite lengths, shortest heads, int/text map
    keys without duplicates, bounded nesting."""
    Walker(data, what, max_depth=_WALK_DEPTH, tag_ok=_cmw_tag).whole()
    stream = BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types, incl. RecursionError/OverflowError
        raise DecodeError(f"{what} does not parse: {exc}") from None
    if stream.tell() != len(data):
        raise DecodeError(f"{len(data) - stream.tell()} bytes after the {what}")
    try:
        canonical = cbor2.dumps(obj)
    except Exception as exc:
        raise DecodeError(f"{what} does not re-encode: {exc}") from None
    if canonical != data:
        raise DecodeError(f"{what} is not in preferred serialization (or has duplicate keys)")
    return obj


@dataclass(frozen=True, slots=True)
class _Prefix:
    """A decoded CBOR collection up to the value of its last member."""

    data: bytes
    members: Mapping[int | str, CMW]  # all members but the last
    last_label: int | str
    ctype: str | None


# The cached tier's CMW is the same on every connection of an epoch but for the value of its last
# member (the per-connection binding record, engine.py). ``decode_cmw`` keeps the last collection
# it decoded up to that value: a CMW that starts with exactly those bytes is that map header and
# those members, followed by one item that must be the last member's value. Only that item is
# decoded and checked for preferred serialization; the result equals a full decode (the prefix
# was part of a CMW that passed every check, and the bytes that follow are checked the same way).
_last_prefix: _Prefix | None = None


def _remember_prefix(data: bytes, obj: Any, cmw: CMW) -> None:
    global _last_prefix
    if not isinstance(cmw, CMWCollection) or not isinstance(obj, dict) or len(obj) < 2:
        return
    last_label = next(reversed(obj))
    if last_label == COLLECTION_TYPE_KEY:
        return
    tail_len = len(cbor2.dumps(obj[last_label]))
    members = dict(cmw.members)
    del members[last_label]
    _last_prefix = _Prefix(data[: len(data) - tail_len], members, last_label, cmw.ctype)


def records(cmw: CMW) -> list[tuple[str, CMWRecord]]:
    """Flatten to ``(path, record)`` pairs; the path names the collection labels on the way."""
    if isinstance(cmw, CMWRecord):
        return [("", cmw)]
    out: list[tuple[str, CMWRecord]] = []
    for label, member in cmw.members.items():
        for sub, rec in records(member):
            out.append((f"{label}/{sub}" if sub else str(label), rec))
    return out


def json_record(record: CMWRecord) -> bytes:
    """JSON serialization of a record (RFC 9999: value is base64url without padding)."""
    if not isinstance(record.media_type, str):
        raise ValueError("JSON CMW records take a media type string")
    val = base64.urlsafe_b64encode(record.value).rstrip(b"=").decode()
    arr: list[Any] = [record.media_type, val] + ([record.ind] if record.ind is not None else [])
    return json.dumps(arr, separators=(",", ":")).encode()
