"""The byte pump: plaintext between an attested TLS stream and a plain stream, both directions.

Theory of operation
-------------------
Two coroutines, one per direction, each: read a chunk (up to 64 KiB), write it, await ``drain()``.
Awaiting the writer's drain before the next read is the backpressure: a slow reader on one side
stops us reading from the other, so memory per connection stays bounded by the transports' high
water marks plus one chunk, whatever the peers do.

Half-close is carried across: EOF from the plain side becomes close_notify on TLS (and the peer's
close_notify becomes ``write_eof()`` on the plain side), while the other direction keeps flowing.
The connection ends when both directions ended, when either side fails (reset, TLS error: the other
direction is cancelled), or when neither direction moved for ``idle_timeout`` seconds.

No per-chunk logging, no per-chunk metrics labels: the counters are plain ints summed per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.engine import READ_CHUNK


class IdleTimeout(Exception):
    """Neither direction moved for the idle timeout."""


@dataclass(slots=True)
class PumpStats:
    tls_to_plain: int = 0
    plain_to_tls: int = 0
    last_activity: float = 0.0


async def pump(
    tls: TLSStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    idle_timeout: float,
    initial_to_plain: bytes = b"",
) -> PumpStats:
    stats = PumpStats(last_activity=time.monotonic())

    async def idle_guard(awaitable: asyncio.Future[bytes] | asyncio.Task[bytes]) -> bytes:
        # Wait for one read, but give up only when *both* directions were idle for idle_timeout.
        while True:
            remaining = stats.last_activity + idle_timeout - time.monotonic()
            if remaining <= 0:
                awaitable.cancel()
                raise IdleTimeout
            done, _ = await asyncio.wait({awaitable}, timeout=remaining)
            if done:
                return awaitable.result()

    async def tls_to_plain() -> None:
        if initial_to_plain:
            writer.write(initial_to_plain)
            stats.tls_to_plain += len(initial_to_plain)
            await writer.drain()
        while True:
            data = await idle_guard(asyncio.ensure_future(tls.read()))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            stats.last_activity = time.monotonic()
            stats.tls_to_plain += len(data)
            writer.write(data)
            await writer.drain()

    async def plain_to_tls() -> None:
        while True:
            data = await idle_guard(asyncio.ensure_future(reader.read(READ_CHUNK)))
            if not data:
                await tls.close_write()
                return
            stats.last_activity = time.monotonic()
            stats.plain_to_tls += len(data)
            await tls.write(data)

    tasks = [asyncio.ensure_future(tls_to_plain()), asyncio.ensure_future(plain_to_tls())]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    return stats
