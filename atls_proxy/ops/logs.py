"""Logging set-up for the CLI: JSON lines for machines, key=value text for people, to stderr.

``format="auto"`` picks text when stderr is a terminal and JSON lines otherwise (journald,
``kubectl logs``, a log shipper). A JSON line carries ``ts`` (RFC 3339, UTC, milliseconds),
``level``, ``logger``, ``msg`` (the same text a person would read) and the structured fields the
code attached with ``extra=`` — for connection outcomes ``event``, ``peer``/``server``,
``result``, ``check``, ``reason``, ``stage``, ``duration_ms`` and byte counts
(docs/OPERATIONS.md lists them).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

LogFormat = Literal["auto", "json", "text"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd ``extra`` values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def resolve_format(fmt: LogFormat, stream: Any = None) -> Literal["json", "text"]:
    if fmt != "auto":
        return fmt
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
