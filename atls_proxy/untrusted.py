"""JSON and TOML from outside the process — peers' evidence, operators' files — as ``ValueError``s.

The standard library's decoders recurse once per nesting level, so input nested deeper than the
interpreter's recursion limit raises ``RecursionError``, well within any size cap (a few KiB of
``[``). Every caller already turns ``ValueError`` (which ``UnicodeDecodeError`` and
``TOMLDecodeError`` are) into its own ``DecodeError`` or ``ConfigError``; these wrappers make the
deep-nesting case one of them, in one place, so that no call site has to remember it.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

__all__ = ["json_loads", "shown", "toml_loads"]


def json_loads(data: bytes | str, **kwargs: Any) -> Any:
    """``json.loads`` of UTF-8 ``data``; ``ValueError`` for anything that does not decode."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data, **kwargs)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def toml_loads(text: str) -> dict[str, Any]:
    """``tomllib.loads``; ``TOMLDecodeError`` (a ``ValueError``) for anything that does not parse."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("TOML nested too deeply") from None


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a peer's value quoted in a
    check's detail (which reaches logs and reports) must not bring kilobytes with it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
