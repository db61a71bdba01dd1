"""atls_proxy/untrusted.py: JSON and TOML nested deeper than the recursion limit, and bytes that
are not UTF-8, are ValueErrors like any other undecodable input (the callers' one except)."""

from __future__ import annotations

import tomllib

import pytest

from atls_proxy.untrusted import json_loads, toml_loads

DEEP = "[" * 100_000 + "]" * 100_000  # a few hundred KiB: inside every size cap of the project


def test_json_round_trip_and_keyword_arguments() -> None:
    assert json_loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert json_loads('{"a": 1}', object_pairs_hook=list) == [("a", 1)]


@pytest.mark.parametrize("data", [DEEP.encode(), DEEP, b"\xff\xfe", b"{", b""])
def test_json_that_does_not_decode_is_a_value_error(data: bytes | str) -> None:
    with pytest.raises(ValueError):
        json_loads(data)


def test_toml_nested_too_deeply_is_a_toml_decode_error() -> None:
    assert toml_loads('a = [1, 2]\n[b]\nc = "d"\n') == {"a": [1, 2], "b": {"c": "d"}}
    with pytest.raises(tomllib.TOMLDecodeError, match="nested too deeply"):
        toml_loads("x = " + "[" * 5000 + "]" * 5000 + "\n")
