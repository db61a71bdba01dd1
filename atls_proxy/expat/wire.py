"""TLS presentation-language primitives (RFC 8446 §3): fixed integers and length-prefixed vectors.

``Reader`` walks a bytes object and raises ``DecodeError`` on any overrun, bad length or leftover
bytes; encoding helpers return bytes and raise ``ValueError`` when a value does not fit its prefix.
"""

from __future__ import annotations

from atls_proxy.errors import DecodeError


def u8(v: int) -> bytes:
    return v.to_bytes(1, "big")


def u16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def u24(v: int) -> bytes:
    return v.to_bytes(3, "big")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def opaque(prefix: int, data: bytes, minimum: int = 0) -> bytes:
    """``opaque x<minimum..2^(8*prefix)-1>``: a ``prefix``-byte big-endian length, then the bytes."""
    n = len(data)
    if n < minimum or n >= 1 << (8 * prefix):
        raise ValueError(f"vector of {n} bytes does not fit <{minimum}..2^{8 * prefix}-1>")
    return n.to_bytes(prefix, "big") + data


class Reader:
    """A cursor over ``data``; every read is bounds-checked."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str = "message") -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError(f"{self._what}: truncated (need {n} bytes, have {self.remaining})")
        self._pos = end
        return self._data[pos:end]

    def uint(self, size: int) -> int:
        pos = self._pos
        end = pos + size
        if end > len(self._data):
            raise DecodeError(f"{self._what}: truncated (need {size} bytes, have {self.remaining})")
        self._pos = end
        return int.from_bytes(self._data[pos:end], "big")

    def opaque(self, prefix: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        n = self.uint(prefix)
        if n < minimum or (maximum is not None and n > maximum):
            hi = maximum if maximum is not None else (1 << (8 * prefix)) - 1
            raise DecodeError(f"{self._what}: vector length {n} outside <{minimum}..{hi}>")
        return self.take(n)

    def end(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self._what}: {self.remaining} trailing bytes")
