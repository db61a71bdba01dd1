"""One TCP connection as a byte stream, in a single protocol object (``Conn``).

Theory of operation
-------------------
``TLSStream`` needs little of a connection before the pump takes it over: ``read()`` (some bytes,
``b""`` at EOF), ``write()``, ``drain()`` (backpressure), ``close()`` and the transport. asyncio's
streams provide that with three objects per connection — a ``StreamReader``, a
``StreamReaderProtocol`` (with its drain-waiter deque and a "closed" future) and a
``StreamWriter`` — plus, for accepted connections, a done-callback closure per task. ``Conn`` is
that subset in one slotted object: the transport's protocol *and* the reader and writer
``TLSStream`` and the pump see. On a proxy holding thousands of connections that is memory and
work per connection saved (``docs/PERFORMANCE.md``); behaviour follows the streams':

* reads are buffered up to ``2 × limit`` bytes, then the transport stops reading until the
  buffer drains (``StreamReader``'s rule: a peer that sends while we wait for the TEE cannot grow
  it without bound);
* EOF ends reads with ``b""``; a connection lost with an error raises that error from ``read()``
  once the bytes that arrived before it were read (a StreamReader raises at once and drops them;
  delivering them lets the TLS engine see a close_notify or alert that preceded a reset);
  ``eof_received`` returns True, so after the peer's EOF we can still answer (a half-closed
  HTTP request to the admin endpoint, TLS 1.3 half-close), as with asyncio's plain-TCP streams;
* ``drain()`` waits while the transport is above its write high-water mark and raises
  ``ConnectionResetError`` once the connection is lost;
* ``close()`` lets the transport send what it still holds, but not forever: a transport closes
  only once its write buffer is empty, so a peer that stops reading (a zero receive window)
  would keep the socket and up to a write buffer of memory after the connection ended — beyond
  ``max_connections``, which counts handlers. When nothing unsent — the transport's buffer plus
  the kernel's send queue (``TIOCOUTQ``), so that a slow reader's progress counts while the
  kernel buffer drains — got out for ``CLOSE_LINGER`` seconds, the connection is aborted.

``wait_ended()`` waits, without reading, until the peer will send nothing more (its EOF or the
connection's loss); ``unless(work, ending)`` runs a long wait on a peer's behalf (a queued quote,
a whole attestation) and abandons it when such an ending comes first.

Every connection the project opens or accepts is a ``Conn``: the listeners' (``serve``,
``connect``, the admin endpoint), the proxy's backend connections and the client's connections to
an attested server. Accepted connections start their handler through ``on_made``
(``Listener``); the pump switches the transport to its own protocols and takes over what is still
buffered (``take_buffer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("atls_proxy.conn")

T = TypeVar("T")

# Read buffer limit: one TLS read chunk, as for the streams this replaces.
READ_LIMIT = 65536
# A closed connection whose unsent bytes did not shrink for this long is aborted (module docstring):
# long enough for a live client that pauses reading (an app in the background), short enough that
# peers which never read cannot pile up sockets and buffers.
CLOSE_LINGER = 60.0


class Conn(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_closed_waiter",
        "_drain_waiter",
        "_ended_waiter",
        "_eof",
        "_exc",
        "_limit",
        "_lost",
        "_on_made",
        "_read_paused",
        "_read_waiter",
        "_write_paused",
        "transport",
    )

    def __init__(
        self, on_made: Callable[[Conn], None] | None = None, limit: int = READ_LIMIT
    ) -> None:
        self._on_made = on_made
        self._limit = limit
        self._buf = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None  # only when someone waits
        self._ended_waiter: asyncio.Future[None] | None = None  # likewise
        self.transport: Any = None  # uvloop's transports do not subclass asyncio's

    # -- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._on_made is not None:
            on_made, self._on_made = self._on_made, None
            on_made(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._wake_reader()
        if not self._read_paused and len(self._buf) > 2 * self._limit:
            try:
                self.transport.pause_reading()
            except NotImplementedError:  # pragma: no cover - every TCP transport can pause
                return
            self._read_paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        self._wake_ended()
        return True  # half-close: our direction stays open, as with asyncio's plain-TCP streams

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            # A result, not an exception: the drain that waited may have been cancelled (a
            # timeout) and nobody would retrieve it; drain() itself raises for a lost connection.
            waiter.set_result(None)
        closed, self._closed_waiter = self._closed_waiter, None
        if closed is not None and not closed.done():
            closed.set_result(None)
        self._wake_ended()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_ended(self) -> None:
        ended, self._ended_waiter = self._ended_waiter, None
        if ended is not None and not ended.done():
            ended.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the reader side ---------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered when ``n < 0``) once some arrived; ``b""`` at EOF."""
        if n == 0:
            return b""
        while not self._buf:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            if self._read_waiter is not None:
                raise RuntimeError("read() called while another read is waiting")
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        if self._read_paused and len(self._buf) <= self._limit:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def read_nowait(self) -> bytes:
        """What is buffered now, emptied (``b""`` when nothing), without waiting; EOF is left for
        ``read`` to report."""
        data = bytes(self._buf)
        self._buf.clear()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    @property
    def write_paused(self) -> bool:
        """Whether the transport's write buffer is over its high-water mark (pause_writing was
        called and resume_writing not yet): the pump starts from this state."""
        return self._write_paused

    def take_buffer(self) -> tuple[bytes, bool]:
        """What is buffered and whether EOF was seen, emptied: the pump takes over from here."""
        data = bytes(self._buf)
        self._buf = bytearray()
        return data, self._eof

    @property
    def broken(self) -> BaseException | None:
        """Why the connection can no longer carry bytes both ways — it was lost with an error
        (a reset), or lost altogether — or None: a peer's EOF alone is a half-close, not this."""
        if self._exc is not None:
            return self._exc
        if self._lost:
            return ConnectionResetError("connection lost")
        return None

    # -- the writer side ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        if self._exc is not None:
            raise self._exc
        if self.transport.is_closing():
            # Let connection_lost run first (asyncio's StreamWriter.drain does the same).
            await asyncio.sleep(0)
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain_waiter)
        if self._lost:
            raise ConnectionResetError("Connection lost")

    def write_eof(self) -> None:
        self.transport.write_eof()

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def reset(self) -> None:
        """End the connection with a TCP reset, dropping what is unsent: the peer sees an error,
        not an end (a plain ``abort()`` sends a FIN, which reads as a clean EOF)."""
        reset_transport(self.transport)

    def close(self, *, flush_before_exit: bool = True) -> None:
        """``flush_before_exit``: the process's drain waits for what this connection still holds
        (``wait_flushed``); the admin endpoint, whose answers are not the service's traffic,
        passes False."""
        tr = self.transport
        tr.close()
        if tr.get_write_buffer_size():
            loop = asyncio.get_running_loop()
            if flush_before_exit:
                _closing[tr] = loop
            loop.call_later(CLOSE_LINGER, _linger, tr, unsent_bytes(tr))

    async def wait_closed(self) -> None:
        """Until the transport reported the connection lost (after ``close()``: flushed)."""
        if self._lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)

    @property
    def ended(self) -> bool:
        """Whether the peer will send nothing more (see ``wait_ended``)."""
        return self._eof

    async def wait_ended(self) -> None:
        """Until the peer will send nothing more: its EOF (a half-close counts) or the loss of the
        connection. Reads nothing: what arrived before stays buffered for ``read``."""
        if self._eof:
            return
        if self._ended_waiter is None:
            self._ended_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ended_waiter)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


class Abandoned(Exception):
    """``unless``: the event that abandons the work came first."""


async def unless(
    work: Coroutine[Any, Any, T],
    ending: Coroutine[Any, Any, None],
    dispose: Callable[[T], None] | None = None,
) -> T:
    """``work``'s outcome (its result, or the exception it raised) — unless ``ending`` completes
    first: then ``Abandoned`` is raised and ``work`` is cancelled. For waits that can be long (a
    queued TEE quote, a whole attestation) on behalf of a peer that may have gone meanwhile.

    Work whose outcome the caller does not take — abandoned, or the caller itself cancelled
    (``CancelledError`` always reaches it) — is cancelled and left to finish its own clean-up in
    the background; whatever it then ends with is collected there: an exception is retrieved
    (no "never retrieved" report), a result handed to ``dispose`` (a connection that completed
    as the caller went away is closed, not leaked). Work that finished in the same loop
    iteration as ``ending`` counts as finished: its outcome is returned."""
    task = asyncio.ensure_future(work)
    end = asyncio.ensure_future(ending)
    taken = False
    try:
        await asyncio.wait((task, end), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            taken = True
            return task.result()
        raise Abandoned
    finally:
        end.cancel()
        if not taken:
            task.cancel()  # nothing if it is done
            task.add_done_callback(functools.partial(_collect, dispose))


def _collect(dispose: Callable[[Any], None] | None, task: asyncio.Future[Any]) -> None:
    """The outcome of work ``unless`` did not hand to its caller (see there)."""
    if task.cancelled():
        return
    if task.exception() is None and dispose is not None:
        try:
            dispose(task.result())
        except Exception:  # a done-callback's error would only reach the loop's handler
            log.exception("disposing of abandoned work's result failed")


def unsent_bytes(transport: Any) -> int:
    """Bytes not yet taken by the peer: the transport's buffer and the kernel's send queue."""
    n: int = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linux: SIOCOUTQ (= TIOCOUTQ), bytes in the send queue not yet acknowledged.
        with contextlib.suppress(OSError, ValueError):
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return n


def reset_transport(transport: Any) -> None:
    """``transport.abort()`` with SO_LINGER 0 first, so that the kernel sends RST, not FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's socket object of a transport whose descriptor is already closed
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


_LINGER_RESET = struct.pack("ii", 1, 0)


# Transports closed while their own write buffer still held bytes (``Conn.close``): the process
# must not exit under them — its teardown would drop those bytes and close the socket with a FIN,
# which the peer reads as a clean end of a truncated stream (``wait_flushed``, ``reset_closing``).
# An entry leaves when ``_linger`` or ``wait_flushed`` finds it flushed, or when it is reset.
_closing: dict[Any, asyncio.AbstractEventLoop] = {}  # transport -> its loop


def _forget_flushed() -> None:
    """Drop the entries that hold nothing any more, or whose loop has closed (a process that ran
    several loops, as tests do: their transports are gone with them)."""
    for tr, loop in list(_closing.items()):
        if loop.is_closed() or not _buffered(tr):
            del _closing[tr]


def _mine() -> list[Any]:
    loop = asyncio.get_running_loop()
    return [tr for tr, owner in _closing.items() if owner is loop]


def _buffered(transport: Any) -> int:
    """Bytes the transport itself still holds (0 once flushed to the kernel, or gone)."""
    try:
        return int(transport.get_write_buffer_size())
    except Exception:  # a transport already gone (some loops refuse calls on closed handles)
        return 0


async def wait_flushed(timeout: float) -> bool:
    """Before the process exits: wait up to ``timeout`` seconds for closed connections to hand
    what they still hold to the kernel (which sends it, then its FIN, after the exit). Whether
    they all did; those that did not are for ``reset_closing``."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        _forget_flushed()
        if not _mine():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(0.05, left))


def reset_closing() -> int:
    """Reset (RST) every closed connection still holding bytes, so that its peer sees an error
    rather than a clean end of a truncated stream; how many there were."""
    _forget_flushed()
    cut = _mine()
    for tr in cut:
        del _closing[tr]
        with contextlib.suppress(Exception):
            reset_transport(tr)
    return len(cut)


def _linger(transport: Any, before: int) -> None:
    """Abort a closing transport when nothing of what it holds got out in ``CLOSE_LINGER``."""
    try:
        if not transport.get_write_buffer_size():
            _closing.pop(transport, None)
            return  # flushed: the transport closes (or has closed) by itself
        now = unsent_bytes(transport)
    except Exception:  # the transport is gone already (some loops refuse calls on closed handles)
        _closing.pop(transport, None)
        return
    if now < before:
        asyncio.get_running_loop().call_later(CLOSE_LINGER, _linger, transport, now)
    else:
        log.debug(
            "closed connection to %s aborted: %d bytes unsent, none taken in %g s",
            transport.get_extra_info("peername"),
            now,
            CLOSE_LINGER,
        )
        # RST, not FIN: the peer must not read the bytes it never took as the stream's end.
        _closing.pop(transport, None)
        reset_transport(transport)


async def open_conn(host: str, port: int) -> Conn:
    """A TCP connection to ``host:port`` as a ``Conn``."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, host, port)
    return conn


async def open_unix_conn(path: str) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_unix_connection(Conn, path)
    return conn
