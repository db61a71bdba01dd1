"""Accept-loop bookkeeping shared by ``serve`` and ``connect``: one task per connection, a
connection limit enforced before any work, a graceful drain (stop accepting, let connections
finish, then cancel the rest) and one metrics event per connection outcome."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atls_proxy.proxy.conn import Conn
from atls_proxy.proxy.pump import IdleTimeout, PumpStats, pump
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.engine import TLSError

if TYPE_CHECKING:
    from atls_proxy.ops.metrics import Metrics

log = logging.getLogger("atls_proxy")

# Transport buffer ceiling per direction; beyond it drain() blocks (backpressure).
WRITE_HIGH_WATER = 256 * 1024


@dataclass(slots=True)
class Outcome:
    """How one connection ended: a reason from ``metrics.CLOSE_REASONS`` and the bytes moved."""

    reason: str = "completed"
    to_backend: int = 0
    to_client: int = 0


class Listener:
    """Subclasses implement ``handle()``, given each accepted connection as one
    ``proxy.conn.Conn`` (reader, writer and protocol together); ``limit_check`` names the refusal
    in the log."""

    limit_check = "max-connections"

    def __init__(self, max_connections: int, metrics: Metrics | None = None) -> None:
        self.max_connections = max_connections
        self.metrics = metrics
        self.active = 0
        self.refused_limit = 0
        self.draining = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def listen(
        self, host: str, port: int, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        """Listen on ``host:port``, or on an inherited listening ``sock`` (socket activation).

        ``reuse_port`` sets SO_REUSEPORT so several worker processes share the port (the kernel
        spreads new connections across them).
        """
        loop = asyncio.get_running_loop()

        def factory() -> Conn:
            return Conn(self._spawn)

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(
                factory, host, port, reuse_port=reuse_port or None, backlog=4096
            )
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def stop_accepting(self) -> None:
        """Drain, step 1: close the listening sockets; open connections carry on."""
        self.draining = True
        if self._server is not None:
            self._server.close()

    async def wait_idle(self, timeout: float) -> bool:
        """Drain, step 2: True once no connection is open, False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the listener and cancel every open connection (drain, step 3)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        # Their outcomes are theirs (each handler ends as drained or failed); a cancellation of
        # whoever closes still reaches it, which suppressing around each await would swallow.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, conn: Conn) -> Outcome | None:
        raise NotImplementedError

    def _spawn(self, conn: Conn) -> None:
        """A connection was accepted: run its handler as a task (what start_server does)."""
        task = asyncio.get_running_loop().create_task(self._accept(conn))
        task.add_done_callback(_report_unhandled)

    def make_room(self) -> bool:
        """At the connection limit: free a place for a new connection if this listener can
        (True), or refuse the new one (False, the default)."""
        return False

    async def _accept(self, conn: Conn) -> None:
        if self.active >= self.max_connections and not self.make_room():
            self.refused_limit += 1
            if self.metrics is not None:
                self.metrics.conn_refused()
            log_event(
                log,
                logging.WARNING,
                "connection",
                "connection refused",
                peer=peer_name(conn),
                result="refused",
                check=self.limit_check,
                limit=self.max_connections,
            )
            conn.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.active += 1
        self._idle.clear()
        if self.metrics is not None:
            self.metrics.conn_accepted()
        outcome: Outcome | None = None
        try:
            conn.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            outcome = await self.handle(conn)
        except asyncio.CancelledError:
            # Shutdown cancels connection tasks; the cancellation ends here, as a drained
            # (or failed) outcome, not as an unhandled task error.
            conn.transport.abort()
            outcome = Outcome("drained" if self.draining else "error")
        finally:
            self.active -= 1
            self._tasks.discard(task)
            if self.active == 0:
                self._idle.set()
            if self.metrics is not None:
                o = outcome or Outcome("error")
                self.metrics.conn_closed(o.reason, o.to_backend, o.to_client)


def _report_unhandled(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("connection handler failed: %r", exc, exc_info=exc)


def monotonic_ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)


def log_event(logger: logging.Logger, level: int, event: str, what: str, **fields: object) -> None:
    """One event per connection outcome: the text line ``what k=v …`` and, for JSON logs, the
    same fields as attributes (``ops/logs.py``). Nothing is formatted when the level is off."""
    if not logger.isEnabledFor(level):
        return
    # A value with a space, or anything not printable (a peer's reason may carry line breaks or
    # escape sequences), is quoted with its escapes: one event stays one line of text.
    text = " ".join(
        f"{k}={v!r}"
        if isinstance(v, str) and (not v or " " in v or not v.isprintable())
        else f"{k}={v}"
        for k, v in fields.items()
    )
    logger.log(level, "%s %s", what, text, extra={"event": event, **fields})


def peer_name(conn: Conn) -> str:
    info = conn.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "unix")


async def forward(
    logger: logging.Logger,
    t0: float,
    tls: TLSStream,
    plain: Conn,
    idle_timeout: float,
    *,
    result: str,
    plain_is_backend: bool,
    initial_to_plain: bytes = b"",
    **fields: object,
) -> Outcome:
    """Pump an attested (or unattested) connection to its end and say how it ended: the one
    place that turns the pump's endings into outcomes, log lines and resets, for ``serve``
    (the plain side is its backend) and ``connect`` (the plain side is the local program, and
    the TLS peer its backend).

    completed   both directions ended: "connection closed", ``result``;
    idle        no byte moved for ``idle_timeout``: "connection closed", idle-timeout; both
                connections are reset — the proxy cut the stream, and neither peer may read that
                as its end (a close_notify or a FIN would be);
    broken      a TLS error or a socket error on either side (a reset, an EOF without
                close_notify, ETIMEDOUT): both connections are reset, so neither peer reads a
                cut stream as finished (proxy/pump.py), and it is logged "connection broken";
    otherwise   (cancelled, a bug) both are reset and the exception goes on.

    The bytes moved count in every case the pump started (``PumpStats`` owned here)."""
    moved = PumpStats()

    def outcome(reason: str) -> Outcome:
        to_plain, to_tls = moved.tls_to_plain, moved.plain_to_tls
        return (
            Outcome(reason, to_plain, to_tls)
            if plain_is_backend
            else Outcome(reason, to_tls, to_plain)
        )

    def sizes() -> dict[str, int]:
        o = outcome("")
        return {"to_backend": o.to_backend, "to_client": o.to_client}

    def closed(how: str) -> None:  # the "connection closed" event, with the bytes moved
        log_event(
            logger,
            logging.INFO,
            "connection",
            "connection closed",
            **fields,
            **sizes(),
            result=how,
            duration_ms=monotonic_ms(t0),
        )

    try:
        await pump(tls, plain, idle_timeout, initial_to_plain=initial_to_plain, stats=moved)
    except IdleTimeout:
        plain.reset()
        tls.reset()
        closed("idle-timeout")
        return outcome("idle_timeout")
    except (TLSError, OSError) as exc:  # OSError: resets, and ETIMEDOUT (a TimeoutError)
        plain.reset()
        tls.reset()
        log_event(
            logger,
            logging.WARNING,
            "connection",
            "connection broken",
            **fields,
            result="broken",
            check="tls.record" if isinstance(exc, TLSError) else "forward",
            reason=str(exc) if isinstance(exc, TLSError) else f"{type(exc).__name__}: {exc}",
            **sizes(),
            duration_ms=monotonic_ms(t0),
        )
        return outcome("peer_reset")
    except BaseException:
        plain.reset()
        tls.reset()
        raise
    closed(result)
    return outcome("completed")
