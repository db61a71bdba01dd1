"""ops/evidence.py::read_evidence: a file holding only hex digits and whitespace is decoded (as
``xxd -p`` writes it, 60 digits a line), anything else is taken as raw bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atls_proxy.ops.evidence import read_evidence

BLOB = os.urandom(1184)  # an SNP report's size


@pytest.mark.parametrize("width", [60, 64, 32, 2000])
def test_hex_in_lines_of_any_width_is_decoded(tmp_path: Path, width: int) -> None:
    digits = BLOB.hex()
    text = "\n".join(digits[i : i + width] for i in range(0, len(digits), width)) + "\n"
    (tmp_path / "r.hex").write_text(text)
    assert read_evidence(tmp_path / "r.hex") == BLOB


def test_spaces_and_crlf_between_digits_are_not_digits(tmp_path: Path) -> None:
    (tmp_path / "r.hex").write_bytes(b" de ad\r\nbe ef \r\n")
    assert read_evidence(tmp_path / "r.hex") == bytes.fromhex("deadbeef")


@pytest.mark.parametrize("raw", [b"\x01\x02\x03", b"abc", b"de ad b", b"xyz0"])
def test_anything_else_is_raw_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "r.bin").write_bytes(raw)
    assert read_evidence(tmp_path / "r.bin") == raw
