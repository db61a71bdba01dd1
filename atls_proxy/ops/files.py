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
