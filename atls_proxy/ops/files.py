"""Reading the files an operator names (configurations, policies, keys, trust material): regular
files only, and never more than a cap.

``open()`` of a FIFO blocks until a writer appears, and reading a character device (``/dev/zero``)
or a huge file never ends or fills memory: a mistyped or hostile path in a policy would then hang
``check-config``, the start, or a reload — and a reload holds its lock meanwhile. So the file is
opened with ``O_NONBLOCK`` (which does not block on a FIFO without a writer), checked to be a
regular file with ``fstat`` on the open descriptor (no race with a rename), and read up to the
cap plus one byte, so that the caller can tell an oversized file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from atls_proxy.errors import ConfigError


def read_capped(path: str | Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the regular file at ``path``; ``OSError`` otherwise (its
    ``strerror`` says "not a regular file" for a FIFO, a device, a folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_trust_file(path: Path, limit: int, what: str = "") -> bytes:
    """``read_capped`` for the files in a policy's trust folders (ops/*_files.py): a
    ``ConfigError`` naming the file when it cannot be read or is larger than ``limit`` (``what``
    says what it is then not)."""
    try:
        data = read_capped(path, limit)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(str(path), f"larger than {limit} bytes" + (f": {what}" if what else ""))
    return data
