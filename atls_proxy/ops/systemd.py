"""systemd integration without dependencies: sd_notify(3) and socket activation (sd_listen_fds(3)).

Theory of operation
-------------------
*Notification* (sd_notify(3)). A service manager that wants to hear from us puts the address of
a ``SOCK_DGRAM`` ``AF_UNIX`` socket in ``$NOTIFY_SOCKET``: a filesystem path (``/run/systemd/
notify``) or, when it starts with ``@``, a Linux abstract socket whose name is the rest (the
``@`` stands for the leading NUL byte). One notification is one datagram of newline-separated
``KEY=VALUE`` assignments (``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=…``). No reply
comes back; a missing variable means "not started by a service manager" and is not an error.
Newer systemd (253+) also accepts ``vsock:CID:PORT`` addresses; those are not supported here and
are treated like a missing socket (logged at debug).

*Reload* (sd_notify(3), ``RELOADING=1``; systemd.service(5), ``Type=notify-reload``). A reload is
announced with ``RELOADING=1`` together with ``MONOTONIC_USEC=`` set to the current
``CLOCK_MONOTONIC`` time in microseconds (the manager uses it to tell this reload's ``READY=1``
from an older one), and finished with ``READY=1``.

*Socket activation* (sd_listen_fds(3), sd_listen_fds_with_names(3)). The manager passes listening
sockets as file descriptors ``SD_LISTEN_FDS_START`` (3) .. 3 + ``$LISTEN_FDS`` - 1, says whom they
are for in ``$LISTEN_PID`` (a child that inherits the environment must not take them) and names
them, colon-separated and in fd order, in ``$LISTEN_FDNAMES`` (``FileDescriptorName=`` in
systemd.socket(5); a socket without a name is ``"unknown"``). The receiver sets ``FD_CLOEXEC``
on them and, normally, unsets the three variables, whether or not they were meant for it.

The parsing halves (``notify_address``, ``notify_payload``, ``parse_listen_env``) are pure
functions of their inputs; ``notify`` and ``listen_fds`` are the thin I/O around them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping

from atls_proxy.errors import ConfigError

log = logging.getLogger("atls_proxy.systemd")

# sd_listen_fds(3): "SD_LISTEN_FDS_START ... currently 3": the first passed descriptor.
SD_LISTEN_FDS_START = 3
# sd_listen_fds_with_names(3): the name of a descriptor when $LISTEN_FDNAMES does not give one.
UNKNOWN_FD_NAME = "unknown"
# Sanity bound on $LISTEN_FDS: this process uses at most one attested and one admin socket, and
# systemd itself caps the descriptors it passes far below this; a larger count is a broken
# environment, not a deployment.
MAX_LISTEN_FDS = 1024
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# -- sd_notify(3) ----------------------------------------------------------------------------


def notify_address(value: str | None) -> str | bytes | None:
    """The ``AF_UNIX`` address ``$NOTIFY_SOCKET`` names, or None when there is none we can use.

    sd_notify(3): an absolute path names a filesystem socket; a leading ``@`` names an abstract
    socket (Linux), whose address is a NUL byte followed by the rest of the name.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:CID:PORT" (systemd 253+): not supported here


def notify_payload(*fields: str) -> bytes:
    """One notification datagram: the ``KEY=VALUE`` fields, newline-separated (sd_notify(3)).

    A newline inside a value would start a new assignment, so it is replaced by a space (a
    ``STATUS=`` built from an exception message must not smuggle in ``READY=1``).
    """
    out = []
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not key or "\n" in key:
            raise ValueError(f"a notification field is KEY=VALUE, got {field!r}")
        out.append(f"{key}={value.replace(chr(10), ' ')}")
    return "\n".join(out).encode()


def notify(*fields: str) -> bool:
    """Send one notification to ``$NOTIFY_SOCKET``; False when there is none or sending failed.

    Never raises for a missing or unreachable socket (the process runs outside systemd, or the
    manager went away): that is logged at debug level only.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    addr = notify_address(raw)
    if addr is None:
        if raw:
            log.debug("NOTIFY_SOCKET=%r is not a supported address; not notifying", raw)
        return False
    payload = notify_payload(*fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(payload, addr)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", raw, exc)
        return False
    return True


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock ``MONOTONIC_USEC=`` is read on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_fields(now_usec: int) -> tuple[str, str]:
    """sd_notify(3): ``RELOADING=1`` must come with ``MONOTONIC_USEC=`` (Type=notify-reload)."""
    return "RELOADING=1", f"MONOTONIC_USEC={now_usec}"


def notify_reloading(*extra: str) -> bool:
    """Announce the start of a reload; finish it with ``notify("READY=1")``."""
    return notify(*reloading_fields(monotonic_usec()), *extra)


# -- sd_listen_fds(3) ------------------------------------------------------------------------


def parse_listen_env(env: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The descriptors and names the environment passes to process ``pid``, in fd order.

    sd_listen_fds(3): nothing when ``$LISTEN_PID`` is unset or names another process (the
    variables were inherited from a parent that did not unset them). A malformed value, or a
    ``$LISTEN_FDNAMES`` whose count differs from ``$LISTEN_FDS`` (sd_listen_fds_with_names(3)
    fails with -EINVAL), is a ``ConfigError`` naming the variable.
    """
    text_pid = env.get("LISTEN_PID")
    if not text_pid:
        return []
    try:
        listen_pid = int(text_pid)
    except ValueError:
        raise ConfigError("LISTEN_PID", f"not a process id: {text_pid!r}") from None
    if listen_pid != pid:
        return []
    text_n = env.get("LISTEN_FDS", "")
    try:
        n = int(text_n)
    except ValueError:
        raise ConfigError("LISTEN_FDS", f"not a number: {text_n!r}") from None
    if not 0 <= n <= MAX_LISTEN_FDS:
        raise ConfigError("LISTEN_FDS", f"{n} is outside 0..{MAX_LISTEN_FDS}")
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        names = [UNKNOWN_FD_NAME] * n
    else:
        names = [name or UNKNOWN_FD_NAME for name in names_text.split(":")] if n else []
        if len(names) != n:
            raise ConfigError(
                "LISTEN_FDNAMES", f"{len(names)} name(s) for {n} descriptor(s): {names_text!r}"
            )
    return [(SD_LISTEN_FDS_START + i, names[i]) for i in range(n)]


def _listening_stream(fd: int, name: str) -> socket.socket:
    """Check that ``fd`` is a listening stream socket (sd_is_socket(3)) and wrap it."""
    where = f"inherited descriptor {fd} ({name!r})"
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ConfigError("LISTEN_FDS", f"{where} is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError("LISTEN_FDS", f"{where} is not a socket")
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError("LISTEN_FDS", f"{where} is not a stream socket (ListenStream=)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ConfigError("LISTEN_FDS", f"{where} is not listening")
    except BaseException:
        sock.detach()  # leave the descriptor as it was
        raise
    return sock


def listen_fds(unset_env: bool = True) -> dict[str, list[socket.socket]]:
    """Sockets passed by socket activation, grouped by name (``FileDescriptorName=``).

    Empty when the process was not socket-activated. Each descriptor gets ``FD_CLOEXEC`` and
    must be a listening stream socket, else ``ConfigError`` (exit 2) says which one is wrong.
    With ``unset_env`` the three variables are removed whatever the outcome, as
    sd_listen_fds(3) does, so children do not see them.
    """
    try:
        passed = parse_listen_env(os.environ, os.getpid())
        out: dict[str, list[socket.socket]] = {}
        for fd, name in passed:
            # sd_listen_fds(3) sets FD_CLOEXEC on every passed descriptor.
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            except OSError as exc:
                raise ConfigError(
                    "LISTEN_FDS",
                    f"inherited descriptor {fd} ({name!r}) is not open: {exc.strerror}",
                ) from None
            out.setdefault(name, []).append(_listening_stream(fd, name))
        if out:
            log.debug(
                "socket activation: %s",
                ", ".join(f"{k}={[s.fileno() for s in v]}" for k, v in out.items()),
            )
        return out
    finally:
        if unset_env:
            _unset(os.environ)


def only_socket(sockets: list[socket.socket] | None, name: str) -> socket.socket | None:
    """The one inherited socket of a name, or None; two or more are a configuration error —
    serving the first would leave the others listening, never served."""
    if not sockets:
        return None
    if len(sockets) > 1:
        raise ConfigError(
            "LISTEN_FDNAMES",
            f"{len(sockets)} inherited sockets named {name!r}: name the attested listener's "
            "socket 'attested' and the admin socket 'admin' (FileDescriptorName=)",
        )
    return sockets[0]


def _unset(env: MutableMapping[str, str]) -> None:
    for key in LISTEN_ENV:
        env.pop(key, None)
