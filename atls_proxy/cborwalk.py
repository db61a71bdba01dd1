"""A well-formedness walk over untrusted CBOR, before any decoder converts it.

Theory of operation
-------------------
cbor2 decodes what RFC 8949 allows, and some of that costs far more than the bytes suggest: the
value-sharing tags 28/29 build a graph in which one item is referenced many times, so a few
hundred bytes decode (in linear time) into a value whose every later traversal — re-encoding it
to check preferred serialization, comparing it, printing it — doubles with each level of sharing;
string references (tags 256/25) multiply bytes the same way, linearly. Indefinite lengths,
non-shortest heads and duplicate map keys are how two parsers come to read one item differently.

``Walker`` reads only heads — RFC 8949 §3 (head format), §4.2.1 (shortest-form arguments,
definite lengths) — skipping byte and text strings by their length, so it costs one step per item,
never per byte. It refuses: indefinite lengths, non-shortest integer/length heads, reserved
additional information, unassigned simple values, nesting deeper than its cap, arrays and maps
that claim more items than bytes remain, map keys of other major types than allowed, duplicate map
keys (by their encoded bytes), and every tag but those the caller allows. Input that passes is
tame: decoding it and walking the result take time and memory proportional to its size. It does no
conversion.
"""

from __future__ import annotations

from collections.abc import Callable

from atls_proxy.errors import DecodeError

# RFC 9052 §1.4 labels, RFC 8392 claim keys and RFC 9999 collection labels are int / tstr.
INT_OR_TEXT_KEYS = frozenset({0, 1, 3})


def no_tags(_tag: int) -> bool:
    return False


class Walker:
    """Checks that ``data`` holds well-formed CBOR of the restricted subset above (one item per
    ``item`` call; ``end`` checks nothing follows)."""

    __slots__ = ("_data", "_key_majors", "_max_depth", "_pos", "_tag_ok", "_what")

    def __init__(
        self,
        data: bytes,
        what: str,
        *,
        max_depth: int,
        tag_ok: Callable[[int], bool] = no_tags,
        key_majors: frozenset[int] = INT_OR_TEXT_KEYS,
    ) -> None:
        self._data = data
        self._pos = 0
        self._what = what
        self._max_depth = max_depth
        self._tag_ok = tag_ok
        self._key_majors = key_majors

    def _fail(self, why: str) -> DecodeError:
        return DecodeError(f"{self._what}: {why} at offset {self._pos}")

    def _take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise self._fail("truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def _skip(self, n: int) -> None:
        if n > len(self._data) - self._pos:
            raise self._fail("truncated")
        self._pos += n

    def _head(self) -> tuple[int, int, int]:
        """Return (major type, additional info, argument); enforce shortest-form arguments."""
        ib = self._take(1)[0]
        major, info = ib >> 5, ib & 0x1F
        if info < 24:
            return major, info, info
        if info == 31:
            raise self._fail("indefinite-length item not allowed")
        if info > 27:
            raise self._fail(f"reserved additional information {info}")
        size = 1 << (info - 24)
        arg = int.from_bytes(self._take(size), "big")
        # Floats (major 7, info 25..27) carry their value in the argument: no minimality rule.
        if major != 7:
            minimum = 24 if size == 1 else 1 << (8 * (size // 2))
            if arg < minimum:
                raise self._fail("non-shortest integer or length encoding")
        return major, info, arg

    def item(self, depth: int = 0) -> None:
        if depth > self._max_depth:
            raise self._fail(f"nesting deeper than {self._max_depth}")
        major, info, arg = self._head()
        if major in (0, 1):
            return
        if major in (2, 3):
            self._skip(arg)
            return
        if major == 4:
            if arg > len(self._data) - self._pos:  # every element takes at least one byte
                raise self._fail("array longer than the input")
            for _ in range(arg):
                self.item(depth + 1)
            return
        if major == 5:
            if 2 * arg > len(self._data) - self._pos:
                raise self._fail("map longer than the input")
            seen: set[bytes] = set()
            for _ in range(arg):
                start = self._pos
                if start >= len(self._data):
                    raise self._fail("truncated")
                if self._data[start] >> 5 not in self._key_majors:
                    raise self._fail("map key is not an integer or text string")
                self.item(depth + 1)
                key = self._data[start : self._pos]
                if key in seen:
                    raise self._fail("duplicate map key")
                seen.add(key)
                self.item(depth + 1)
            return
        if major == 6:
            if not self._tag_ok(arg):
                raise self._fail(f"unexpected CBOR tag {arg}")
            self.item(depth + 1)
            return
        # Major type 7: false, true, null, undefined (RFC 8949 §3.3) and floats only.
        if info in (20, 21, 22, 23, 25, 26, 27):
            return
        raise self._fail(f"unassigned simple value {arg}")

    def tag(self, expected: int) -> None:
        """The next head must be exactly tag ``expected``; its content is walked by ``item``."""
        major, _info, arg = self._head()
        if major != 6 or arg != expected:
            raise DecodeError(f"{self._what}: not a CBOR tag {expected} item")

    @property
    def position(self) -> int:
        return self._pos

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self._fail(f"{len(self._data) - self._pos} trailing bytes")

    def whole(self) -> None:
        """The input is exactly one tame item (module docstring), or ``DecodeError``."""
        self.item()
        self.end()
