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

    async def tls_to_plain() -> None:
        if initial_to_plain:
            writer.write(initial_to_plain)
            stats.tls_to_plain += len(initial_to_plain)
            await writer.drain()
        while data := await tls.read():
            stats.last_activity = time.monotonic()
            stats.tls_to_plain += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def plain_to_tls() -> None:
        while data := await reader.read(READ_CHUNK):
            stats.last_activity = time.monotonic()
            stats.plain_to_tls += len(data)
            await tls.write(data)
        await tls.close_write()

    async def watchdog() -> None:
        # One timer per connection (not per read): sleep until the idle deadline, re-arm if
        # either direction moved meanwhile.
        while True:
            remaining = stats.last_activity + idle_timeout - time.monotonic()
            if remaining <= 0:
                raise IdleTimeout
            await asyncio.sleep(remaining)

    directions = {asyncio.ensure_future(tls_to_plain()), asyncio.ensure_future(plain_to_tls())}
    dog = asyncio.ensure_future(watchdog())
    try:
        pending = set(directions)
        while pending:
            done, pending = await asyncio.wait(pending | {dog}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(dog)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
    finally:
        for t in (*directions, dog):
            if not t.done():
                t.cancel()
        for t in (*directions, dog):
            with contextlib.suppress(BaseException):
                await t
    return stats
