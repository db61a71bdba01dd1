"""asyncio adapter for ``TLSEngine``: a TLS stream over a ``proxy.conn.Conn`` (what the project's
connections are) or any reader/writer pair with the same few methods (asyncio's streams, in tests).

Thin on purpose (aioquic's habit): it moves ciphertext between the socket and the engine, drains
the engine's output before every wait for input, and awaits ``drain()`` after writes so a slow peer
pushes back on the writer instead of growing buffers.

Coalescing: output the engine produces is sent with the next ``write``, or before the next wait
for input, or at ``close`` — never later. So the handshake's last flight (a client's Finished, a
server's NewSessionTicket) rides in the same TCP segment as the first message that follows it, and
``queue`` lets a caller hand over bytes that go out with whatever is sent next (the client's ACCEPT
frame travels with the first application bytes). Nothing can stall: every wait for input flushes
first, so a peer that waits for us always gets what we have.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from atls_proxy.proxy.conn import reset_transport
from atls_proxy.tls.engine import READ_CHUNK, TLSEngine, TLSError


class ByteReader(Protocol):
    """What TLSStream reads from: an ``asyncio.StreamReader`` or a ``proxy.conn.Conn``."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    """What TLSStream writes to: an ``asyncio.StreamWriter`` or a ``proxy.conn.Conn``."""

    @property
    def transport(self) -> Any: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def drain(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


class TLSStream:
    __slots__ = ("_eof", "engine", "reader", "writer")

    def __init__(self, reader: ByteReader, writer: ByteWriter, engine: TLSEngine) -> None:
        self.reader = reader
        self.writer = writer
        self.engine = engine
        self._eof = False

    def _flush_nowait(self) -> bool:
        """Hand the engine's output to the writer; whether there was any."""
        out = self.engine.outgoing()
        if out and not self.writer.is_closing():
            self.writer.write(out)
            return True
        return False

    async def _flush(self) -> None:
        self._flush_nowait()
        await self.writer.drain()

    async def _fill(self) -> None:
        raw = await self.reader.read(READ_CHUNK)
        if raw:
            self.engine.feed(raw)
        else:
            self._eof = True
            self.engine.feed_eof()

    async def handshake(self) -> None:
        """Complete the handshake. The last flight stays queued for the next send (see above)."""
        while not self.engine.handshake():
            await self._flush()
            if self._eof:
                raise TLSError("peer closed the connection during the TLS handshake")
            await self._fill()

    async def read(self) -> bytes:
        """Plaintext; ``b""`` once the peer sent close_notify. Truncation raises ``TLSError``."""
        while True:
            data = self.engine.read()
            if data is not None:
                return data
            # Whatever we owe the peer goes out before we wait for it — and if there was some,
            # we wait for it to drain: reading can produce output without plaintext (a KeyUpdate
            # answered), and a peer that sends those and never reads must not grow our buffer.
            if self._flush_nowait():
                await self.writer.drain()
            if self._eof:
                raise TLSError("connection closed without close_notify")
            await self._fill()

    def read_nowait(self) -> bytes | None:
        """Plaintext that has already arrived, without waiting: from what the engine holds and
        what the reader has buffered (a ``Conn``'s ``read_nowait``). None when there is none;
        ``b""`` for close_notify. Bytes still in the kernel's buffers are not seen."""
        buffered = getattr(self.reader, "read_nowait", None)
        if buffered is not None and (raw := buffered()):
            self.engine.feed(raw)
        return self.engine.read()

    def queue(self, data: bytes) -> None:
        """Encrypt ``data`` now; it is sent with the next write, before the next wait, or at close."""
        self.engine.write(data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.engine.write(bytes(data))
        await self._flush()

    async def close_write(self) -> None:
        """close_notify: our direction is finished; the peer's may continue (RFC 8446 §6.1)."""
        self.engine.close_notify()
        with contextlib.suppress(ConnectionError):
            await self._flush()

    def abort(self) -> None:
        self.writer.transport.abort()

    def reset(self) -> None:
        """End with a TCP reset and no close_notify: the peer sees a cut stream, not an end."""
        reset_transport(self.writer.transport)

    async def close(self) -> None:
        """Send close_notify if we still can, then close the socket.

        The transport sends what is still buffered before it closes the descriptor; nothing
        waits for that (``wait_closed`` would cost a loop iteration per connection, and after the
        pump the transport reports to the pump's protocol, so it would never complete).
        """
        self.close_nowait()

    def close_nowait(self) -> None:
        """``close`` for callers that cannot await (a done-callback): the same steps."""
        if not self.writer.is_closing():
            self.engine.close_notify()
            with contextlib.suppress(Exception):
                self._flush_nowait()
            self.writer.close()
