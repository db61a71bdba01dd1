"""expat/memo.py: what ``keep_short`` keeps, and what it never keeps."""

from __future__ import annotations

import pytest

from atls_proxy.expat.memo import keep_short


def _counting(limit: int, maxsize: int):  # type: ignore[no-untyped-def]
    calls: list[bytes] = []

    @keep_short(limit, maxsize)
    def parse(data: bytes, label: str = "") -> tuple[str, int]:
        calls.append(data)
        if data.startswith(b"bad"):
            raise ValueError("does not parse")
        return (label, len(data))

    return parse, calls


def test_short_input_is_parsed_once_per_value() -> None:
    parse, calls = _counting(8, 4)
    first = parse(b"abc", "x")
    assert parse(bytes(bytearray(b"abc")), "x") is first and calls == [b"abc"]
    assert parse(b"abc", "y") == ("y", 3) and len(calls) == 2  # the other arguments are the key


def test_long_input_is_parsed_every_time_and_never_kept() -> None:
    parse, calls = _counting(8, 4)
    for _ in range(3):
        assert parse(b"x" * 9) == ("", 9)
    assert len(calls) == 3 and parse.cache_info().currsize == 0


def test_failures_are_not_kept() -> None:
    parse, calls = _counting(8, 4)
    for _ in range(2):
        with pytest.raises(ValueError):
            parse(b"bad")
    assert len(calls) == 2 and parse.cache_info().currsize == 0


def test_bounded_in_entries() -> None:
    parse, calls = _counting(8, 4)
    for i in range(10):
        parse(bytes([i]))
    assert parse.cache_info().currsize == 4
    parse(bytes([9]))  # the most recent are kept
    assert len(calls) == 10
    parse(bytes([0]))  # the oldest went
    assert len(calls) == 11
