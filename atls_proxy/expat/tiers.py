"""Wire definitions of the freshness tiers (docs/PROTOCOL.md §5.3) shared by the evidence engine
(attest/engine.py) and the relying party's appraisal (verify/appraise.py) — sans-IO.

    strict   CMW record: the evidence over the connection's own binder.
    batched  CMW collection {"evidence": quote over a Merkle root, "merkle": inclusion proof}.
    cached   CMW collection {"evidence": epoch quote over epoch_digest, "epoch": epoch record,
                             "binding": AIK signature over binder ‖ epoch_digest}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import cbor2

from atls_proxy.errors import DecodeError
from atls_proxy.expat.binding import hash_bytes

EPOCH_MEDIA_TYPE = "application/vnd.atls-proxy.epoch+cbor"
AIK_BINDING_MEDIA_TYPE = "application/vnd.atls-proxy.aik-binding+cbor"
EPOCH_DIGEST_LABEL = b"atls-proxy epoch v1\x00"
AIK_BINDING_LABEL = b"atls-proxy aik binding v1\x00"
EPOCH_NONCE_LENGTH = 16
# An AIK signature: RSA-4096 is 512 bytes; ECDSA and EdDSA far less.
MAX_AIK_SIGNATURE = 1024


class Tier(enum.Enum):
    STRICT = "strict"
    BATCHED = "batched"
    CACHED = "cached"


@dataclass(frozen=True, slots=True)
class Epoch:
    start: int
    expires: int
    nonce: bytes

    def encode(self) -> bytes:
        out: bytes = cbor2.dumps({1: self.start, 2: self.expires, 3: self.nonce})
        return out

    @classmethod
    def decode(cls, data: bytes) -> Epoch:
        if len(data) > 64:
            raise DecodeError("epoch record too large")
        try:
            obj = cbor2.loads(data)
        except Exception as exc:
            raise DecodeError(f"epoch record does not parse: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != {1, 2, 3}:
            raise DecodeError("epoch record is {1: start, 2: expires, 3: nonce}")
        start, expires, nonce = obj[1], obj[2], obj[3]
        if (
            not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, expires)
            )
            or not isinstance(nonce, bytes)
            or len(nonce) != EPOCH_NONCE_LENGTH
            or expires <= start
        ):
            raise DecodeError("epoch record fields out of range")
        ep = cls(start, expires, nonce)
        if ep.encode() != data:
            raise DecodeError("epoch record is not in preferred serialization")
        return ep


def epoch_digest(hash_name: str, encoded_epoch: bytes) -> bytes:
    """What the epoch quote carries in place of a binder."""
    return hash_bytes(hash_name, EPOCH_DIGEST_LABEL + encoded_epoch)


def aik_binding_content(binder: bytes, digest: bytes) -> bytes:
    """What the AIK signs per connection in the cached tier."""
    return AIK_BINDING_LABEL + binder + digest


def cbor_head(major: int, n: int) -> bytes:
    """An RFC 8949 §3 initial byte and argument in preferred (shortest) serialization."""
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + n.to_bytes(8, "big")


def encode_aik_binding(scheme: int, signature: bytes) -> bytes:
    """CBOR ``[SignatureScheme, signature]``, written directly (it is built per connection, and
    this is the same bytes ``cbor2.dumps`` writes; a test checks that): array(2), uint, bstr."""
    return b"\x82" + cbor_head(0, scheme) + cbor_head(2, len(signature)) + signature


def encode_record(media_type: str, value: bytes) -> bytes:
    """CBOR of a CMW record ``[media-type, value]`` (draft-ietf-rats-msg-wrap §3.1), written
    directly for the per-connection member: array(2), tstr, bstr."""
    mt = media_type.encode()
    return b"\x82" + cbor_head(3, len(mt)) + mt + cbor_head(2, len(value)) + value


def decode_aik_binding(data: bytes) -> tuple[int, bytes]:
    if len(data) > MAX_AIK_SIGNATURE + 16:
        raise DecodeError("AIK binding too large")
    try:
        obj = cbor2.loads(data)
    except Exception as exc:
        raise DecodeError(f"AIK binding does not parse: {exc}") from None
    if (
        not isinstance(obj, list)
        or len(obj) != 2
        or not isinstance(obj[0], int)
        or isinstance(obj[0], bool)
        or not 0 <= obj[0] <= 0xFFFF
        or not isinstance(obj[1], bytes)
    ):
        raise DecodeError("AIK binding is [SignatureScheme, signature]")
    # One spelling only (docs/PROTOCOL.md §5: preferred serialization, definite lengths, nothing
    # after the item), as for the epoch record and the inclusion proof.
    if encode_aik_binding(obj[0], obj[1]) != data:
        raise DecodeError("AIK binding is not in preferred serialization")
    return obj[0], obj[1]
