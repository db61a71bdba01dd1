"""The asyncio load generator for attested peers (wrk cannot speak Expat).

Every connection is opened with ``atls_proxy.proxy.client.open_attested``: TCP, TLS 1.3 handshake,
the Expat exchange and the full appraisal of the evidence, exactly as ``atls-proxy connect`` does,
but without a local forwarder in between (a forwarder is itself a proxy and would be measured too).
Requests are HTTP/1.1 GETs, one at a time per connection (no pipelining), like wrk's.

The same generator also drives the proxy with attestation off through ``plain_opener``: the same
client TLS stack minus the Expat exchange, so ``atls`` ÷ ``off-asyncio`` isolates what attestation
costs at a comparable offered load (wrk, driving ``off``, offers far more load than this generator).

* ``per_request``: a new connection per request (``Connection: close``): the ``attest`` workload;
* ``keepalive``: ``connections`` connections opened before the measured window, then GETs on each
  until the window closes: the ``small`` and ``bulk`` workloads;
* ``hold_idle``: open connections (attested, or plain TLS with the stdlib for the baselines), one
  GET each, and keep them open: the ``idle`` workload.

Every loop stops starting work at its deadline and at a count cap, whichever comes first. What was
started inside the measured window is counted when it completes, and the window (and the CPU
readings) closes when the last of it has: counts, duration and CPU seconds cover the same work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from atls_proxy.bench.common import CpuWindow
from atls_proxy.proxy.client import AttestationFailed, ClientSettings, open_attested
from atls_proxy.proxy.conn import open_conn
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.engine import TLSEngine, TLSError

# Whatever the duration, never more than this many requests (or connections) in one run.
MAX_REQUESTS = 2_000_000
# Seconds one request (or one connection set-up) may take before it counts as an error.
REQUEST_TIMEOUT = 30.0
# Longest response head accepted from the backend through the proxy.
MAX_HEAD = 16 * 1024


@dataclass
class GenFigures:
    """What one measured window produced, from the generator's side."""

    completed: int = 0
    errors: int = 0
    duration_s: float = 0.0
    body_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    generator_cpu_s: float = 0.0

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            if isinstance(exc, AttestationFailed) and exc.report.first_failure is not None:
                f = exc.report.first_failure
                self.error_samples.append(f"{f.name}: {f.detail}")
            else:
                self.error_samples.append(f"{type(exc).__name__}: {exc}")


ERRORS = (AttestationFailed, OSError, RuntimeError, TimeoutError, TLSError, ssl.SSLError)


def request_bytes(path: str, close: bool) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode("ascii")


class ResponseReader:
    """Reads HTTP/1.1 responses with Content-Length from a ``TLSStream`` without keeping bodies."""

    __slots__ = ("buf", "stream")

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _more(self) -> None:
        chunk = await self.stream.read()
        if not chunk:
            raise RuntimeError("connection closed before the response was complete")
        self.buf += chunk

    async def response(self) -> int:
        """Read one response; return its body length. Raises on a non-200 or malformed one."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise RuntimeError("response head too long")
            await self._more()
        head = bytes(self.buf[:end])
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response {head[:40]!r}")
        length = content_length(head)
        del self.buf[: end + 4]
        remaining = length - len(self.buf)
        if remaining <= 0:
            del self.buf[:length]
            return length
        self.buf.clear()
        while remaining > 0:
            chunk = await self.stream.read()
            if not chunk:
                raise RuntimeError("connection closed in the middle of a body")
            if len(chunk) > remaining:  # never happens without pipelining; kept for safety
                self.buf += chunk[remaining:]
            remaining -= len(chunk)
        return length


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise RuntimeError("response without Content-Length")


Opener = Callable[[], Awaitable[TLSStream]]


def attested_opener(settings: ClientSettings) -> Opener:
    """Connections through ``open_attested``: handshake, Expat exchange, full appraisal."""

    async def opener() -> TLSStream:
        return (await open_attested(settings)).stream

    return opener


def plain_opener(settings: ClientSettings) -> Opener:
    """The same client stack (``TLSStream`` over pyOpenSSL, same CA and name checks by OpenSSL),
    without the Expat exchange: a plain TLS client, for the proxy with attestation off."""

    async def opener() -> TLSStream:
        # The same connection object as open_attested (proxy/conn.py), so that the two
        # generators differ by the Expat exchange only.
        conn = await open_conn(settings.host, settings.port)
        stream = TLSStream(
            conn,
            conn,
            TLSEngine(settings.ssl_context, server_side=False, server_name=settings.server_name),
        )
        try:
            async with asyncio.timeout(settings.timeouts.handshake):
                await stream.handshake()
        except BaseException:
            await stream.close()
            raise
        return stream

    return opener


async def request_close(opener: Opener, request: bytes) -> int:
    """Open a connection, send ``request`` (``Connection: close``), read the response, close;
    return the body's length."""
    stream = await opener()
    try:
        await stream.write(request)
        size = await ResponseReader(stream).response()
    finally:
        await stream.close()
    return size


async def _warm_then_measure(
    run: Callable[[float, bool], Awaitable[None]],
    reset: Callable[[], None],
    warmup: float,
    duration: float,
    window: CpuWindow | None,
    figures: GenFigures,
) -> None:
    """``run`` unrecorded for ``warmup`` seconds, ``reset`` the request count, then ``run``
    recorded for ``duration`` with the CPU window (and the generator's own CPU) around it."""
    if warmup > 0:
        await run(time.monotonic() + warmup, False)
    reset()
    if window is not None:
        window.start()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    await run(t0 + duration, True)
    figures.duration_s = time.monotonic() - t0
    figures.generator_cpu_s = time.process_time() - cpu0
    if window is not None:
        window.stop()


async def per_request(
    opener: Opener,
    path: str,
    concurrency: int,
    duration: float,
    warmup: float,
    window: CpuWindow | None = None,
) -> GenFigures:
    """New connection per request; ``warmup`` seconds first, not counted.

    ``window`` is started and stopped around the measured part only.
    """
    request = request_bytes(path, close=True)
    figures = GenFigures()
    count = 0

    async def run(until: float, record: bool) -> None:
        nonlocal count

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < until and count < MAX_REQUESTS:
                count += 1
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        size = await request_close(opener, request)
                except ERRORS as exc:
                    if record:
                        figures.error(exc)
                    continue
                t1 = time.monotonic()
                if record:
                    figures.completed += 1
                    figures.body_bytes += size
                    figures.latencies_ms.append((t1 - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def reset() -> None:
        nonlocal count
        count = 0

    await _warm_then_measure(run, reset, warmup, duration, window, figures)
    return figures


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


async def open_many(
    opener: Callable[[], Awaitable[C]], n: int, parallel: int, figures: GenFigures
) -> list[C]:
    """Open ``n`` connections, at most ``parallel`` at a time; failures are counted in ``figures``."""
    sem = asyncio.Semaphore(parallel)
    streams: list[C] = []

    async def one() -> None:
        async with sem:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    streams.append(await opener())
            except ERRORS as exc:
                figures.error(exc)

    await asyncio.gather(*(one() for _ in range(n)))
    return streams


async def close_all(streams: Sequence[Closable]) -> None:
    async def one(s: Closable) -> None:
        with contextlib.suppress(Exception):
            await s.close()

    for i in range(0, len(streams), 256):
        await asyncio.gather(*(one(s) for s in streams[i : i + 256]))


async def keepalive(
    opener: Opener,
    path: str,
    connections: int,
    duration: float,
    warmup: float,
    window: CpuWindow | None = None,
) -> GenFigures:
    """``connections`` keep-alive connections; GETs on each for ``duration`` seconds.

    Connections are opened, and ``warmup`` seconds of requests run, before ``window`` starts.
    """
    request = request_bytes(path, close=False)
    figures = GenFigures()
    setup = GenFigures()
    streams = await open_many(opener, connections, 64, setup)
    if not streams:
        raise RuntimeError(f"no connection could be opened: {setup.error_samples[:1]}")
    count = 0
    try:

        async def run(until: float, record: bool) -> None:
            nonlocal count

            async def worker(stream: TLSStream) -> None:
                nonlocal count
                reader = ResponseReader(stream)
                while time.monotonic() < until and count < MAX_REQUESTS:
                    count += 1
                    t0 = time.monotonic()
                    try:
                        async with asyncio.timeout(REQUEST_TIMEOUT):
                            await stream.write(request)
                            size = await reader.response()
                    except ERRORS as exc:
                        if record:
                            figures.error(exc)
                        return  # this connection is broken; the others go on
                    t1 = time.monotonic()
                    if record:
                        figures.completed += 1
                        figures.body_bytes += size
                        figures.latencies_ms.append((t1 - t0) * 1000)

            await asyncio.gather(*(worker(s) for s in streams))

        def reset() -> None:
            nonlocal count
            count = 0

        await _warm_then_measure(run, reset, warmup, duration, window, figures)
    finally:
        await close_all(streams)
    figures.errors += setup.errors
    figures.error_samples = (setup.error_samples + figures.error_samples)[:5]
    return figures


class PlainTLSConn:
    """A stdlib TLS connection with the ``close`` of a ``TLSStream`` (for ``close_all``)."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def close(self, timeout: float = 1.0) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()


async def plain_tls_get(port: int, tls: ssl.SSLContext, path: str) -> PlainTLSConn:
    """Open a plain TLS connection, send one keep-alive GET, read the response, keep it open."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost"
    )
    try:
        writer.write(request_bytes(path, close=False))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response {head[:40]!r}")
        await reader.readexactly(content_length(head))
    except BaseException:
        writer.close()
        raise
    return PlainTLSConn(reader, writer)


async def plain_get(settings: ClientSettings, path: str) -> TLSStream:
    """``attested_get`` without the Expat exchange: the same client stack (``plain_opener``)."""
    stream = await plain_opener(settings)()
    try:
        await stream.write(request_bytes(path, close=False))
        await ResponseReader(stream).response()
    except BaseException:
        await stream.close()
        raise
    return stream


async def attested_get(settings: ClientSettings, path: str) -> TLSStream:
    """Open an attested connection, send one keep-alive GET, read the response, keep it open.

    The GET also carries the client's ACCEPT (queued by ``open_attested``), so the server
    completes the exchange and connects the backend: the connection is fully established.
    """
    conn = await open_attested(settings)
    try:
        await conn.stream.write(request_bytes(path, close=False))
        await ResponseReader(conn.stream).response()
    except BaseException:
        await conn.stream.close()
        raise
    return conn.stream
