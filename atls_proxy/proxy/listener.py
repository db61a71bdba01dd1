"""Accept-loop bookkeeping shared by ``serve`` and ``connect``: one task per connection, a
connection limit enforced before any work, and a shutdown that cancels what is still open."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("atls_proxy")

# Transport buffer ceiling per direction; beyond it drain() blocks (backpressure).
WRITE_HIGH_WATER = 256 * 1024
# StreamReader buffer limit: one TLS read chunk.
READ_LIMIT = 65536


class Listener:
    """Subclasses implement ``handle()``; ``limit_check`` names the refusal in the log."""

    limit_check = "max-connections"

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        self.refused_limit = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> list[tuple[str, int]]:
        self._server = await asyncio.start_server(self._accept, host, port, limit=READ_LIMIT)
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self.refused_limit += 1
            log.warning(
                "connection refused peer=%s check=%s limit=%d",
                peer_name(writer),
                self.limit_check,
                self.max_connections,
            )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.active += 1
        try:
            writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            await self.handle(reader, writer)
        except asyncio.CancelledError:
            # Shutdown cancels connection tasks; the stream callback must not see the
            # cancellation (Python 3.11's StreamReaderProtocol logs it as an error).
            writer.transport.abort()
        finally:
            self.active -= 1
            self._tasks.discard(task)


def peer_name(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "unix")
