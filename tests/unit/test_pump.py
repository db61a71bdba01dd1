"""The byte pump against a peer that keeps sending after its close_notify (loopback sockets).

RFC 8446 §6.1: data received after a closure alert MUST be ignored. A peer that streams bytes
after close_notify, while the backend keeps the other direction open, must not be able to grow
the TLS engine's input buffer (the memory of the whole proxy) — and the other direction must keep
flowing to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from atls_proxy.proxy.conn import Conn, open_conn
from atls_proxy.proxy.pump import pump
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import client_context, server_context
from atls_proxy.tls.engine import TLSEngine
from tests.support.pki import identity

IDENT = identity("p256")
JUNK = b"\x17\x03\x03\x40\x00" + b"A" * (1 << 20)  # looks like a record header, then 1 MiB


class CountingEngine(TLSEngine):
    """Counts the ciphertext bytes handed to OpenSSL after the peer's close_notify was read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.closed_by_peer = False
        self.fed_after_close = 0

    def feed(self, data: bytes) -> None:
        if self.closed_by_peer:
            self.fed_after_close += len(data)
        super().feed(data)

    def read(self, n: int = 16384) -> bytes | None:
        data = super().read(n)
        if data == b"":
            self.closed_by_peer = True
        return data


async def test_bytes_after_close_notify_are_ignored_not_buffered() -> None:
    loop = asyncio.get_running_loop()
    backend_writers: list[asyncio.StreamWriter] = []
    backend_eof = asyncio.Event()

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        backend_writers.append(w)  # keeps its direction open, like a streaming response
        while await r.read(65536):
            pass
        backend_eof.set()

    bsrv = await asyncio.start_server(backend, "127.0.0.1", 0)
    bport = bsrv.sockets[0].getsockname()[1]
    engines: list[CountingEngine] = []
    pumps: list[asyncio.Task[object]] = []

    async def handle(conn: Conn) -> None:
        engine = CountingEngine(server_context(IDENT), server_side=True)
        engines.append(engine)
        tls = TLSStream(conn, conn, engine)
        await tls.handshake()
        plain = await open_conn("127.0.0.1", bport)
        await pump(tls, plain, idle_timeout=30)

    srv = await loop.create_server(
        lambda: Conn(lambda c: pumps.append(loop.create_task(handle(c)))), "127.0.0.1", 0
    )
    sock = socket.create_connection(("127.0.0.1", srv.sockets[0].getsockname()[1]))
    sock.setblocking(False)
    try:
        client = TLSEngine(
            client_context(None, verify_pki=False), server_side=False, server_name="localhost"
        )
        while not client.handshake():
            if out := client.outgoing():
                await loop.sock_sendall(sock, out)
            client.feed(await loop.sock_recv(sock, 65536))
        client.write(b"hello")
        client.close_notify()
        await loop.sock_sendall(sock, client.outgoing())
        await asyncio.wait_for(backend_eof.wait(), 5)  # close_notify became EOF to the backend

        # 8 MiB after close_notify: dropped, or not even read (the TLS side is paused).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_send(loop, sock, JUNK, 8), 2)
        await asyncio.sleep(0.2)
        (engine,) = engines
        assert engine.closed_by_peer
        assert engine.fed_after_close == 0

        # The other direction still flows to the peer, and the pump ends when it ends.
        backend_writers[0].write(b"still flowing")
        backend_writers[0].close()
        got = b""
        while b"still flowing" not in got:
            client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
            while (chunk := client.read()) is not None and chunk:
                got += chunk
        await asyncio.wait_for(pumps[0], 5)
    finally:
        sock.close()
        for t in pumps:
            t.cancel()
        srv.close()
        bsrv.close()


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, n: int) -> None:
    for _ in range(n):
        await loop.sock_sendall(sock, data)
