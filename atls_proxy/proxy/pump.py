"""The byte pump: plaintext between an attested TLS stream and a plain stream, both directions.

Theory of operation
-------------------
Once a connection is attested its two transports are handed to two small protocol objects
(``transport.set_protocol``): bytes are moved inside the transports' ``data_received`` callbacks —
TLS bytes in, fed to the engine, plaintext out to the backend; backend bytes in, encrypted, TLS
records out — with no read buffer, no future and no task step per chunk. Whatever the
connections (``Conn``) had already buffered when the pump starts is taken over first, so nothing read before
the switch is lost.

Backpressure is the transports' own flow control, crossed over: when one side's write buffer
passes its high-water mark (``pause_writing``) the pump stops reading the *other* side
(``pause_reading``) until it drains (``resume_writing``). The two directions stay independent:
a peer that uploads before it reads keeps being read while its download waits in a full buffer
(full duplex). One exception: reading TLS can itself produce TLS output (OpenSSL answers each
KeyUpdate with update_requested by one of its own), so when a read *wrote* into a full TLS write
buffer, the TLS side stops being read until that buffer drains — a peer that floods KeyUpdates
and never reads stops being read instead of growing our buffer. Memory per connection stays
bounded by the two write buffers plus one read's answers, whatever the peers do.

Half-close is carried across: EOF from the plain side becomes close_notify on TLS, and the peer's
close_notify becomes ``write_eof()`` on the plain side, while the other direction keeps flowing.
After the peer's close_notify nothing it sends matters (RFC 8446 §6.1: data received after a
closure alert MUST be ignored): the TLS side stops being read and any bytes already in flight are
dropped unread, so a peer cannot grow the engine's input buffer by streaming after its close.
The pump ends when both directions ended, when either side fails (reset; a TLS error; a TLS EOF
without close_notify, which is a truncation), or when no byte moved either way for
``idle_timeout`` seconds: none read, and none of what was queued taken by the peer (one timer per
connection, looking every half ``idle_timeout`` at what is still unsent, so the cut comes 1 to
1.5 × ``idle_timeout`` after the last byte moved). A failure — an idle timeout too — is an
exception; the callers then *abort* both connections (a reset, no close_notify),
so that neither peer mistakes a cut stream for a finished one (the truncation TLS protects
against, passed on as a clean end). A side already lost when the pump starts fails it at once.
A unix-socket backend cannot be told: AF_UNIX has no reset, so there the abort reads as an EOF;
a backend that relies on EOF to delimit its data should be reached over loopback TCP.

No per-chunk logging, no per-chunk metric labels: the counters are plain ints summed per connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from atls_proxy.proxy.conn import Conn, unsent_bytes
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.engine import TLSError


class IdleTimeout(Exception):
    """Neither direction moved for the idle timeout."""


@dataclass(slots=True)
class PumpStats:
    tls_to_plain: int = 0
    plain_to_tls: int = 0
    last_activity: float = 0.0


class _Pump:
    __slots__ = (
        "done",
        "engine",
        "plain",
        "plain_full",
        "plain_in_done",
        "stats",
        "tls",
        "tls_full",
        "tls_in_done",
        "tls_throttled",
    )

    def __init__(
        self,
        tls: TLSStream,
        plain: asyncio.WriteTransport,
        tls_transport: asyncio.Transport,
        done: asyncio.Future[PumpStats],
        stats: PumpStats,
    ) -> None:
        self.engine = tls.engine
        self.plain = plain
        self.tls = tls_transport
        self.done = done
        self.stats = stats
        stats.last_activity = time.monotonic()
        self.tls_in_done = False  # the TLS peer sent close_notify
        # Write buffers over their high-water mark (pause_writing, until resume_writing).
        self.tls_full = False
        self.plain_full = False
        # TLS reading paused because a read wrote into the full TLS buffer (module docstring).
        self.tls_throttled = False
        self.plain_in_done = False  # the plain side sent EOF

    # -- ending --------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def maybe_finish(self) -> None:
        if self.tls_in_done and self.plain_in_done and not self.done.done():
            self.done.set_result(self.stats)

    # -- TLS → plain ---------------------------------------------------------------------------

    def tls_bytes(self, data: bytes) -> None:
        if self.tls_in_done:
            return  # after close_notify: ignored, never buffered (module docstring)
        try:
            self.engine.feed(data)
            self.decrypt()
        except TLSError as exc:
            self.fail(exc)

    def decrypt(self) -> None:
        engine, plain = self.engine, self.plain
        while not self.tls_in_done:
            data = engine.read()
            if data is None:
                break
            if not data:  # close_notify: the peer's direction is finished (RFC 8446 §6.1)
                self.tls_in_done = True
                _pause(self.tls)  # nothing more from this peer is read (module docstring)
                if plain.can_write_eof() and not plain.is_closing():
                    plain.write_eof()
                break
            if plain.is_closing():
                # Gone (reset, or lost): its bytes have nowhere to go, and writing to a closed
                # transport raises under uvloop.
                self.fail(ConnectionResetError("the other side of the pump is closed"))
                return
            self.stats.tls_to_plain += len(data)
            self.stats.last_activity = time.monotonic()
            plain.write(data)
        # Key updates, alerts: whatever reading produced goes out — and if it went into a full
        # buffer, this side is not read again until that drains (module docstring).
        if self.flush_tls() and self.tls_full and not self.tls_throttled:
            self.tls_throttled = True
            _pause(self.tls)
        self.maybe_finish()

    def tls_eof(self) -> None:
        if self.tls_in_done:
            return
        try:
            self.engine.feed_eof()
            self.decrypt()
        except TLSError as exc:
            self.fail(exc)
            return
        if not self.tls_in_done:
            self.fail(TLSError("connection closed without close_notify"))

    def resume_tls(self) -> None:
        """Read the TLS side again, unless the backend's buffer is still full, reading TLS is
        throttled, or the peer's direction ended (after close_notify it stays paused)."""
        if not (self.tls_throttled or self.plain_full or self.tls_in_done):
            _resume(self.tls)

    def flush_tls(self) -> bool:
        """Send what the engine has for the peer; whether there was anything."""
        out = self.engine.outgoing()
        if out and not self.tls.is_closing():
            self.tls.write(out)
            return True
        return False

    # -- plain → TLS ---------------------------------------------------------------------------

    def plain_bytes(self, data: bytes) -> None:
        self.stats.plain_to_tls += len(data)
        self.stats.last_activity = time.monotonic()
        try:
            self.engine.write(data)
        except TLSError as exc:
            self.fail(exc)
            return
        self.flush_tls()

    def plain_eof(self) -> None:
        if self.plain_in_done:
            return
        self.plain_in_done = True
        self.engine.close_notify()
        self.flush_tls()
        self.maybe_finish()


class _TLSSide(asyncio.Protocol):
    __slots__ = ("p",)

    def __init__(self, p: _Pump) -> None:
        self.p = p

    def data_received(self, data: bytes) -> None:
        self.p.tls_bytes(data)

    def eof_received(self) -> bool:
        self.p.tls_eof()
        return True  # keep our sending direction open

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.p.fail(exc)
        elif not self.p.tls_in_done:
            self.p.fail(TLSError("connection closed without close_notify"))

    def pause_writing(self) -> None:
        self.p.tls_full = True
        _pause(self.p.plain)

    def resume_writing(self) -> None:
        p = self.p
        p.tls_full = False
        _resume(p.plain)
        if p.tls_throttled:
            p.tls_throttled = False
            p.resume_tls()


class _PlainSide(asyncio.Protocol):
    __slots__ = ("p",)

    def __init__(self, p: _Pump) -> None:
        self.p = p

    def data_received(self, data: bytes) -> None:
        self.p.plain_bytes(data)

    def eof_received(self) -> bool:
        self.p.plain_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.p.fail(exc)
        else:
            self.p.plain_eof()  # closed: no more bytes from this side

    def pause_writing(self) -> None:
        self.p.plain_full = True
        _pause(self.p.tls)

    def resume_writing(self) -> None:
        self.p.plain_full = False
        self.p.resume_tls()


def _pause(transport: Any) -> None:
    if not transport.is_closing():
        transport.pause_reading()


def _resume(transport: Any) -> None:
    if not transport.is_closing():
        transport.resume_reading()


async def pump(
    tls: TLSStream,
    plain: Conn,
    idle_timeout: float,
    initial_to_plain: bytes = b"",
    stats: PumpStats | None = None,
) -> PumpStats:
    """Move bytes between ``tls`` (a TLSStream over a ``Conn``) and ``plain`` until both
    directions ended; ``initial_to_plain``: plaintext already read from ``tls``. ``stats``, when
    given, is the object counted into: the caller still has the bytes moved when the pump ends
    in an exception (an idle timeout, a reset)."""
    tls_conn = tls.reader
    if not isinstance(tls_conn, Conn):
        raise TypeError("the pump takes over a TLSStream built on a proxy.conn.Conn")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[PumpStats] = loop.create_future()
    tls_tr: Any = tls_conn.transport
    plain_tr: Any = plain.transport
    p = _Pump(tls, plain_tr, tls_tr, done, stats if stats is not None else PumpStats())

    # A side lost before the pump starts (say a local client that reset while the attestation
    # ran) fails it before a byte moves: its request is not forwarded as if it had half-closed.
    for side in (plain, tls_conn):
        broken = side.broken
        if broken is not None:
            raise broken
    # Take over what the connections already hold, then switch the transports to the pump.
    tls_pending, tls_eof = tls_conn.take_buffer()
    plain_pending, plain_eof = plain.take_buffer()
    # A write buffer already over its high-water mark stays so: its pause_writing went to the Conn,
    # and the transport will not repeat it (say a peer flooded KeyUpdates while the exchange's
    # read waited in drain). Start from that state, or neither throttle would ever fire.
    p.tls_full = tls_conn.write_paused
    p.plain_full = plain.write_paused
    tls_tr.set_protocol(_TLSSide(p))
    plain_tr.set_protocol(_PlainSide(p))
    if p.tls_full:
        p.tls_throttled = True  # what reading TLS would write goes into a full buffer
        _pause(plain_tr)
    else:
        _resume(plain_tr)
    if p.tls_throttled or p.plain_full:
        _pause(tls_tr)
    else:
        _resume(tls_tr)
    if initial_to_plain and not plain_tr.is_closing():
        p.stats.tls_to_plain += len(initial_to_plain)
        plain_tr.write(initial_to_plain)
    if tls_pending:
        p.tls_bytes(tls_pending)
    else:
        try:
            p.decrypt()  # records the engine had buffered before the switch
        except TLSError as exc:
            p.fail(exc)
    if tls_eof or tls._eof:
        p.tls_eof()
    if plain_pending:
        p.plain_bytes(plain_pending)
    if plain_eof:
        p.plain_eof()

    timer: asyncio.TimerHandle | None = None

    # Nothing is measured per connection until the first look (half an idle_timeout in): that
    # look counts as activity — never an early cut, at most half an idle_timeout late.
    last_unsent = sys.maxsize

    def check_idle() -> None:
        # Bytes a slow reader takes from what we queued count as activity too: "idle" is no byte
        # moving in either direction, not only no new byte read. What is still unsent (our
        # buffers and the kernel's unacknowledged bytes) is looked at every half idle_timeout at
        # least; less than last time means the peer took some.
        nonlocal timer, last_unsent
        now_unsent = unsent_bytes(tls_tr) + unsent_bytes(plain_tr)
        if now_unsent < last_unsent:
            p.stats.last_activity = time.monotonic()
        last_unsent = now_unsent
        remaining = p.stats.last_activity + idle_timeout - time.monotonic()
        if remaining > 0:
            timer = loop.call_later(min(remaining, idle_timeout / 2), check_idle)
        else:
            p.fail(IdleTimeout())

    timer = loop.call_later(idle_timeout / 2, check_idle)
    try:
        return await done
    finally:
        timer.cancel()
        if not done.done():
            done.cancel()
        # Stop feeding callbacks into a finished pump; the caller closes both transports.
        for tr in (tls_tr, plain_tr):
            _pause(tr)
