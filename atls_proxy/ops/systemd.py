"""systemd integration without dependencies: sd_notify(3) and sd_listen_fds(3).

(Provisional minimal version; see the full module.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

SD_LISTEN_FDS_START = 3


def notify(*fields: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto("\n".join(fields).encode(), addr)
    except OSError:
        return False
    return True


def notify_reloading() -> bool:
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )


def listen_fds(unset_env: bool = True) -> dict[str, list[socket.socket]]:
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return {}
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = (
        os.environ.get("LISTEN_FDNAMES", "").split(":") if os.environ.get("LISTEN_FDNAMES") else []
    )
    out: dict[str, list[socket.socket]] = {}
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else "unknown"
        out.setdefault(name, []).append(socket.socket(fileno=fd))
    if unset_env:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            with contextlib.suppress(KeyError):
                del os.environ[k]
    return out
