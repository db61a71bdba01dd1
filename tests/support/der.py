"""Hand-built DER (ITU-T X.690) for tests that make structures ``cryptography`` will not build."""

from __future__ import annotations


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element: ``tag`` (a one-byte identifier), the definite length, then ``body``
    (X.690 §8.1.3: the short form below 128, else the long form in the fewest bytes)."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body
