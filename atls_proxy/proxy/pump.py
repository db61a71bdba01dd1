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

Cost per connection: the TLS→plain direction runs in the caller's task and the plain→TLS
direction in one extra task; the idle watchdog is a single timer handle (``call_later``) that
re-arms itself from the last activity, not a task and not a timer per read. A direction that fails
cancels the caller's task at once (its done-callback), so a reset on one side never waits for
the idle timeout of the other.
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

    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    other = asyncio.ensure_future(plain_to_tls())
    why: list[BaseException] = []  # what ended the pump early: IdleTimeout or a failed direction
    timer: asyncio.TimerHandle | None = None

    def on_other_done(t: asyncio.Future[None]) -> None:
        if not t.cancelled() and t.exception() is not None and not why:
            why.append(t.exception())  # type: ignore[arg-type]
            me.cancel()

    def check_idle() -> None:
        nonlocal timer
        remaining = stats.last_activity + idle_timeout - time.monotonic()
        if remaining > 0:
            timer = loop.call_later(remaining, check_idle)
        elif not why:
            why.append(IdleTimeout())
            me.cancel()

    other.add_done_callback(on_other_done)
    timer = loop.call_later(idle_timeout, check_idle)
    try:
        try:
            await tls_to_plain()
            await asyncio.shield(other)
        except asyncio.CancelledError:
            if not why:
                raise  # cancelled from outside (shutdown): not ours to translate
            me.uncancel()
            raise why[0] from None
    finally:
        if timer is not None:
            timer.cancel()
        if not other.done():
            other.cancel()
        with contextlib.suppress(BaseException):
            await other
    return stats
